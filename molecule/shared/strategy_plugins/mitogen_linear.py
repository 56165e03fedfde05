"""Mitogen's linear strategy, from the mitogen package pinned in requirements-dev.txt.

Each task over `podman exec` started a container process and a Python interpreter on the host,
and then imported its module: on six hosts that was most of what converge, idempotence and
check mode cost. Under this strategy each host keeps one interpreter, started once by
`podman exec --interactive`, and tasks are calls into it (the `podman` transport becomes
Mitogen's `mitogen_podman`). The play's logic is Ansible's own linear strategy.

mitogen's own copy of this file reaches its package through a path relative to its install
folder; this one imports it, so the scenario names a folder of the repository instead of a
site-packages path. Plays that run on the controller itself (`connection: local`: Molecule's
create and destroy) keep Ansible's own linear strategy: their `async` podman runs died under
Mitogen (started, never finished), and the create step waited for instances that did not come.
Test infrastructure only: real fleets run the stock strategy over SSH."""

import ansible_mitogen.loaders
import ansible_mitogen.strategy

Base = ansible_mitogen.loaders.strategy_loader.get("linear", class_only=True)


class StrategyModule(ansible_mitogen.strategy.StrategyMixin, Base):
    def run(self, iterator, play_context, result=0):
        # The play's own keyword: the play context still holds the default (ssh) here.
        if iterator._play.connection == "local":
            return Base.run(self, iterator, play_context)
        return super().run(iterator, play_context, result)
