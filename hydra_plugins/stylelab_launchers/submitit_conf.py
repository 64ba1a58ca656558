"""Configs of stylelab's submitit launchers: the plugin's, plus `jobs_per_task`.

`conf/hydra/launcher/{slurm,local}.yaml` build on these. (No `from __future__ import
annotations`: Hydra's plugin scan runs this module before it is in `sys.modules`, where
dataclasses cannot resolve string annotations.)
"""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf, SlurmQueueConf

LAUNCHERS = "hydra_plugins.stylelab_launchers.submitit_launchers"


@dataclass
class StylelabSlurmConf(SlurmQueueConf):
    _target_: str = f"{LAUNCHERS}.SlurmLauncher"
    jobs_per_task: int = 1  # sweep jobs run as one batch in each array task


@dataclass
class StylelabLocalConf(LocalQueueConf):
    _target_: str = f"{LAUNCHERS}.LocalLauncher"
    jobs_per_task: int = 1


for name, node in (("slurm", StylelabSlurmConf), ("local", StylelabLocalConf)):
    ConfigStore.instance().store(
        group="hydra/launcher", name=f"stylelab_submitit_{name}", node=node, provider="stylelab"
    )
