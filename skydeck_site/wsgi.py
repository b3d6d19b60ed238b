import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "skydeck_site.settings")
os.environ.setdefault("SKYPILOT_DISABLE_USAGE_COLLECTION", "1")

application = get_wsgi_application()
