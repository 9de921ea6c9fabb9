"""Running the server as an operator does: drain on SIGTERM, then stop (see README, "Shutdown")."""
