"""The benchmark suite: phantom configurations with their own seeds and shortcuts, each run through the stages with
every setting frozen, scored against the planted truth (``python -m lanic_nb.benchmark``): ``configs`` (the
configurations), ``suite`` (running them), ``score`` (a run's row of the table)."""
