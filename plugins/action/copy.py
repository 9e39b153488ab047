# ansible.legacy.copy, and through it ansible.legacy.template: ansible-core's own copy
# action with two round trips fewer for a file that is already right.
#
# ansible-core's copy (and template, which hands its rendered file to copy) opens a remote
# temporary directory before it knows whether anything is to be sent (`echo ~`, `mkdir`, and
# `rm -rf` at the end: three execs), then, when the checksums match, runs the file module
# only to set owner, group and mode that its stat has already read. On a converge that
# changes nothing that is four of the five round trips of every template and copy task
# (measured on the demo's no-op: 58 template/copy items, 383 execs in all).
#
# Here the temporary directory is made only when a file is really sent, and the file
# module is skipped when the stat shows a regular file whose owner, group and mode are the
# ones asked for and no other attribute is set. Anything else (a symbolic mode, a numeric
# owner, SELinux or chattr attributes, a link, a drifted mode) goes the upstream way.
# Tests: molecule/_harness/tests/test_action_plugins.py runs real playbooks through it.
# The roles call it as ansible.legacy.copy / ansible.legacy.template; ansible.cfg and the
# Molecule base config put plugins/action on the action plugin path. Without that path
# (the roles installed as a collection elsewhere) the same tasks run ansible-core's own.

import importlib.util
import os
import re

import ansible.plugins.action
from ansible.utils.hashing import checksum


def upstream(name):
    """ansible-core's own action module NAME, loaded from its file under a private name: this
    file is itself loaded as ansible.plugins.action.<name> (legacy and builtin plugins share
    that package), so an import by that name would find this file, half loaded."""
    path = os.path.join(os.path.dirname(ansible.plugins.action.__file__), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"multinotes_upstream_action_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


UpstreamCopy = upstream("copy").ActionModule

# Task arguments that the file module would act on besides owner, group and mode.
_OTHER_ATTRIBUTES = ("attributes", "selevel", "serole", "setype", "seuser")
_OCTAL_MODE = re.compile(r"^0?[0-7]{3,4}$")


def wanted_mode(mode):
    """The mode asked for as an int, None when none is asked, False when it cannot be
    compared without the file module (symbolic, 'preserve', anything else)."""
    if mode is None:
        return None
    if isinstance(mode, bool):
        return False
    if isinstance(mode, int):
        return mode
    if isinstance(mode, str) and _OCTAL_MODE.match(mode):
        return int(mode, 8)
    return False


def attributes_match(args, stat):
    """True when the file module, given these arguments, would change nothing on the file
    this stat describes."""
    if not stat.get("exists") or not stat.get("isreg") or stat.get("islnk"):
        return False
    if any(args.get(name) is not None for name in _OTHER_ATTRIBUTES):
        return False
    mode = wanted_mode(args.get("mode"))
    if mode is False or (mode is not None and int(stat.get("mode", "-1"), 8) != mode):
        return False
    for arg, field in (("owner", "pw_name"), ("group", "gr_name")):
        value = args.get(arg)
        if value is not None and str(value) != stat.get(field):
            return False
    return True


class ActionModule(UpstreamCopy):
    # No remote temporary directory up front: _execute_remote_stat opens it when needed.
    TRANSFERS_FILES = False

    def _copy_file(self, source_full, source_rel, content, content_tempfile, dest, task_vars, follow):
        try:
            self._local_checksum = checksum(self._loader.get_real_file(source_full, decrypt=False))
        except Exception:  # upstream reports a missing or unreadable source itself
            self._local_checksum = None
        self._dest_stat = None
        try:
            return super()._copy_file(source_full, source_rel, content, content_tempfile, dest, task_vars, follow)
        finally:
            self._local_checksum = self._dest_stat = None

    def _execute_remote_stat(self, path, all_vars, follow, tmp=None, checksum=True):
        stat = super()._execute_remote_stat(path, all_vars, follow, checksum=checksum)
        self._dest_stat = stat
        sends = getattr(self, "_local_checksum", None) != stat.get("checksum") and not self._task.check_mode
        if sends and self._connection._shell.tmpdir is None:
            self._make_tmp_path()
        return stat

    def _execute_module(self, module_name=None, module_args=None, task_vars=None, **kwargs):
        stat = getattr(self, "_dest_stat", None)
        if (module_name == "ansible.legacy.file" and stat and module_args
                and module_args.get("state") == "file" and attributes_match(module_args, stat)):
            path = module_args.get("dest") or module_args.get("path")
            return {"changed": False, "path": path, "dest": path, "state": "file", "mode": stat["mode"],
                    "owner": stat.get("pw_name"), "group": stat.get("gr_name"), "uid": stat.get("uid"),
                    "gid": stat.get("gid"), "size": stat.get("size")}
        return super()._execute_module(module_name=module_name, module_args=module_args, task_vars=task_vars,
                                       **kwargs)
