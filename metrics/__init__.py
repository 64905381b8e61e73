"""The SAR metrics as local `evaluate` modules, one folder each (`evaluate.load(<folder>)`)."""
