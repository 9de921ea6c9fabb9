"""The playground: a page to try the Cog server in a browser, as a client of its public HTTP API only.

Nothing here imports the server's package, and nothing the server runs imports this folder
(tests/test_architecture.py checks both); its packages are in requirements-playground.txt."""
