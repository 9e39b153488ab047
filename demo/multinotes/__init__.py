# PyMySQL stands in for mysqlclient (pure Python: no compiler or libmariadb on the hosts).
# Django checks the MySQLdb version it sees; PyMySQL implements what Django needs.
import pymysql

pymysql.version_info = (2, 2, 7, "final", 0)
pymysql.install_as_MySQLdb()

from .celery import app as celery_app  # noqa: E402

__all__ = ("celery_app",)
