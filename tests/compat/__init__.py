"""Client-version matrix: the gateway against several real aioesphomeapi releases, each in its own venv."""
