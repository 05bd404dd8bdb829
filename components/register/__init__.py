"""register: put the gated winner in the MLflow Model Registry as challenger, maybe champion."""
