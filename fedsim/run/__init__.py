"""Running fedsim: the runner behind ``fedsim run``, results directories, callbacks,
progress, telemetry, plots and sweeps."""
