from django.contrib import admin

from .models import Heartbeat, Note

admin.site.register(Note)
admin.site.register(Heartbeat)
