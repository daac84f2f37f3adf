"""``fund bench``: every optimisation of the plan as a ratio measured side by side in one run.

Scenarios (``--only`` picks some): ``search`` (list queries with and without their indexes),
``depth`` (OFFSET against cursor), ``nplusone`` (1 + N statements against ``include=``),
``cache`` (miss against hit), ``export`` (rows/s and server memory) and ``http`` (load on
loopback, 1 and 2 workers, beside the bare ``/healthz`` floor). The report goes to
``docs/benchmarks/REPORT.md`` with its charts, and a summary to stdout.

The package itself imports nothing: ``fund.bench.arguments`` is read by every ``fund``
command line, and the rest of the bench (the app, the report's charts) takes a second.
"""
