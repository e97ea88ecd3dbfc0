"""`spro-mcore study`: a grid of trainer runs over seeds, run resumably, aggregated into report.md + plots.

spec (the study file and its cells) -> runner (each run a normal `spro-mcore train` in a subprocess) ->
aggregate (pure statistics over metrics.jsonl rows) -> report (summary.json, report.md, PNG plots).
"""
