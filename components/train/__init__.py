"""train: build and fit one candidate model, logged to MLflow."""
