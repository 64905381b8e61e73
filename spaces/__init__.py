"""The demo Space: `app.py` (the page) and `fusar_demo.py` (its logic), run from this folder."""
