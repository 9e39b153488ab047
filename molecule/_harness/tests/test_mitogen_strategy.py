"""The opt-in Mitogen strategy (plugins/strategy/mitogen_linear.py, ANSIBLE_STRATEGY=
mitogen_linear) loads through the repository's ansible.cfg and really runs the tasks: a
probe module reports whether it ran inside Mitogen's interpreter, and the project's own
copy/template actions keep their results under it (a change, then none, check mode
changing nothing). Without the variable Ansible's linear strategy runs, as in CI. A Mitogen
or ansible-core upgrade that breaks the shim fails here, not on an operator's converge."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

PROBE = '''from ansible.module_utils.basic import AnsibleModule
import os
import sys


def main():
    module = AnsibleModule(argument_spec={}, supports_check_mode=True)
    module.exit_json(changed=False, mitogen="mitogen.core" in sys.modules, pid=os.getpid())


if __name__ == "__main__":
    main()
'''

PLAY = """- name: Probe
  hosts: all
  gather_facts: false
  tasks:
    - name: Where modules run
      probe:
    - name: Where modules run, again
      probe:
    - name: A template
      ansible.legacy.template:
        src: {tmp}/greeting.j2
        dest: {tmp}/out/greeting.conf
        mode: "0640"
"""


def run(tmp, *extra, strategy=None):
    (tmp / "library").mkdir(exist_ok=True)
    (tmp / "library" / "probe.py").write_text(PROBE)
    (tmp / "greeting.j2").write_text("hello {{ name }}\n")
    (tmp / "play.yml").write_text(PLAY.format(tmp=tmp))
    env = {k: v for k, v in os.environ.items() if k not in ("ANSIBLE_STRATEGY", "ANSIBLE_STRATEGY_PLUGINS")}
    env.update(ANSIBLE_LIBRARY=str(tmp / "library"), ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json",
               ANSIBLE_REMOTE_TMP=str(tmp / "remote"), ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    if strategy:
        env["ANSIBLE_STRATEGY"] = strategy
    result = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "probe,", "-c", "local",
         "-e", f"ansible_python_interpreter={sys.executable}", *extra, str(tmp / "play.yml")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out, _ = json.JSONDecoder().raw_decode(result.stdout[result.stdout.index("{\n"):])
    return {t["task"]["name"]: t["hosts"]["probe"] for t in out["plays"][0]["tasks"]}


@pytest.fixture
def tmp(tmp_path):
    (tmp_path / "out").mkdir()
    return tmp_path


def test_the_opt_in_runs_modules_inside_mitogen_and_keeps_the_actions_results(tmp):
    tasks = run(tmp, "-e", "name=world", strategy="mitogen_linear")
    assert tasks["Where modules run"]["mitogen"], tasks["Where modules run"]
    # One interpreter on the target for the whole run: both tasks ran in the same process.
    assert tasks["Where modules run"]["pid"] == tasks["Where modules run, again"]["pid"]
    assert tasks["A template"]["changed"] and (tmp / "out" / "greeting.conf").read_text() == "hello world\n"
    assert oct((tmp / "out" / "greeting.conf").stat().st_mode & 0o777) == "0o640"
    assert not run(tmp, "-e", "name=world", strategy="mitogen_linear")["A template"]["changed"]
    checked = run(tmp, "-e", "name=there", "--check", "--diff", strategy="mitogen_linear")
    assert checked["A template"]["changed"] and (tmp / "out" / "greeting.conf").read_text() == "hello world\n"


def test_without_the_opt_in_ansibles_own_strategy_runs(tmp):
    tasks = run(tmp, "-e", "name=world")
    assert not tasks["Where modules run"]["mitogen"]
    assert tasks["Where modules run"]["pid"] != tasks["Where modules run, again"]["pid"]
