"""Asset types: pure, vectorised physics models, each with its tag table declared once."""
