"""Running the server as an operator does: drain on SIGTERM, then stop (docs/deployment.md#shutdown-drain-then-stop)."""
