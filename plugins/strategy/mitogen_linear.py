"""Mitogen's linear strategy (PyPI `mitogen`, pinned in requirements.txt), opt-in:

    ANSIBLE_STRATEGY=mitogen_linear ansible-playbook -i inventories/production site.yml

ansible.cfg's `strategy_plugins = plugins/strategy` finds this file wherever the venv is;
the class is Mitogen's own. Over SSH it keeps one connection and one Python interpreter per
host for the whole run instead of a new module process per task: the stack's no-op converge
takes about two thirds of the time (benchmarks/RESULTS.md, "Mitogen over SSH"). Without the
variable, Ansible's own linear strategy runs, as in CI.
"""

from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule  # noqa: F401
