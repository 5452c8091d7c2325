"""What gunicorn and `flask --app app` load: `gunicorn app:app`."""

from idp import create_app

app = create_app()
