"""Reports of evaluate_bench.py: tables, plots and the model card's model-index."""
