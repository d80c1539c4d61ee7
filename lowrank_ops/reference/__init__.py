"""Pure-torch references of every op: float64-capable, used by the tests, as benchmark baselines and as
the fallback when the compiled extension is missing. Readable first; fast enough to be a fallback."""
