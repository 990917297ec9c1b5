"""Pre- and post-processing shared by predict, evaluation and the server."""
