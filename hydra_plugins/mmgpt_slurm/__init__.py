"""mmgpt's Hydra launcher plugin: Hydra instantiates launchers only from the ``hydra_plugins`` namespace, so the
launcher of ``conf/hydra/launcher/slurm.yaml`` is named here; it lives in :mod:`mmgpt.cli.slurm`."""

from mmgpt.cli.slurm import WatchedSlurmLauncher


class MmgptSlurmLauncher(WatchedSlurmLauncher):
    """:class:`mmgpt.cli.slurm.WatchedSlurmLauncher` under the name Hydra accepts."""
