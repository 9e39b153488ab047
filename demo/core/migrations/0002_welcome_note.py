"""A reversible data migration: rollback tests migrate back past it and forward again."""
from django.db import migrations

WELCOME = "Welcome to MultinotesAI"


def add_welcome(apps, schema_editor):
    Note = apps.get_model("core", "Note")
    Note.objects.get_or_create(title=WELCOME, defaults={"body": "Your first note."})


def remove_welcome(apps, schema_editor):
    Note = apps.get_model("core", "Note")
    Note.objects.filter(title=WELCOME).delete()


class Migration(migrations.Migration):
    dependencies = [("core", "0001_initial")]
    operations = [migrations.RunPython(add_welcome, remove_welcome)]
