# ansible.legacy.template: ansible-core's own template action without the remote temporary
# directory it opens up front. It renders locally and hands the file to ansible.legacy.copy
# (plugins/action/copy.py here), which opens that directory only when the file is really
# sent. The reason and the measurement are in copy.py.

import importlib.util
import os

import ansible.plugins.action

# This file is loaded as ansible.plugins.action.template (legacy and builtin plugins share
# that package): ansible-core's own is loaded from its file under a private name.
_PATH = os.path.join(os.path.dirname(ansible.plugins.action.__file__), "template.py")
_SPEC = importlib.util.spec_from_file_location("multinotes_upstream_action_template", _PATH)
_UPSTREAM = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_UPSTREAM)


class ActionModule(_UPSTREAM.ActionModule):
    TRANSFERS_FILES = False
