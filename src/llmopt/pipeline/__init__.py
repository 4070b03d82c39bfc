"""Where techniques meet: the stage registry, `run_stage`, recipes and runs.

- `registry.STAGES`: every stage by name; `formats.FORMATS`: every checkpoint format.
- `runner.run_stage`: check, load, measure, apply, save atomically, measure, record.
- `recipe` / `run`: a YAML list of stages run into one folder, resumable.
"""
