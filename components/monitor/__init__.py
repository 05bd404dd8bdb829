"""Monitor: does the new export look like what the champion was trained on, and does the champion still hold?"""
