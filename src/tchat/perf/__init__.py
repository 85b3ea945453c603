"""Performance suite support: results contract, report, progress, load generators."""
