"""WSGI entry point for gunicorn: multinotes.wsgi:application."""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "multinotes.settings")
application = get_wsgi_application()
