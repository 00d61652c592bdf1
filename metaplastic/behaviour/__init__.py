"""The choice experiment: flies choosing whether to accept an odour in a two-odour operant
task, modelled by a mushroom body whose plastic layer follows a rule.

- the task and the model: `OperantTask`, `MushroomBody`, `OdourEncoding`;
- recorded behaviour: `ChoiceDataset`, `PackedChoiceDataset`, `expected_reward`, and
  `NoisyChoices` (draws of the unobserved input noise, for the marginal likelihood);
- closed-loop generation (`generate_behaviour`) and teacher-forced replay (`replay`);
- choice objectives for `metaplastic.fit` (`ChoiceBCE`, `ChoiceActivity`) and the
  forward-sensitivity Jacobian that fits them fast (`ChoiceSensitivities`, registered with
  `metaplastic.Automatic` when this package is imported);
- metrics (`percent_deviance`, `compare_behaviour`);
- ensembles of student rules and rule-recovery experiments (`recovery_data`,
  `recover_rule`).
"""

from .._jacobian import register_differentiation
from ..rules import FACTORS as FACTORS
from ._data import DEFAULT_DRAWS as DEFAULT_DRAWS
from ._data import ChoiceDataset as ChoiceDataset
from ._data import NoisyChoices as NoisyChoices
from ._data import PackedChoiceDataset as PackedChoiceDataset
from ._data import expected_reward as expected_reward
from ._data import marginal_logits as marginal_logits
from ._ensembles import MLP_STUDENT_SCALE as MLP_STUDENT_SCALE
from ._ensembles import TAYLOR_STUDENT_SCALE as TAYLOR_STUDENT_SCALE
from ._ensembles import mlp_student as mlp_student
from ._ensembles import mlp_students as mlp_students
from ._ensembles import stack_members as stack_members
from ._ensembles import stack_rules as stack_rules
from ._ensembles import taylor_student as taylor_student
from ._ensembles import taylor_students as taylor_students
from ._generate import GeneratedBehaviour as GeneratedBehaviour
from ._generate import OperantEnvironment as OperantEnvironment
from ._generate import encode_odours as encode_odours
from ._generate import generate_behaviour as generate_behaviour
from ._metrics import compare_behaviour as compare_behaviour
from ._metrics import null_network as null_network
from ._metrics import percent_deviance as percent_deviance
from ._network import DEFAULT_INPUT_VARIANCE as DEFAULT_INPUT_VARIANCE
from ._network import REWARD_SIGNALS as REWARD_SIGNALS
from ._network import MushroomBody as MushroomBody
from ._network import OdourEncoding as OdourEncoding
from ._objectives import ChoiceActivity as ChoiceActivity
from ._objectives import ChoiceActivityDataset as ChoiceActivityDataset
from ._objectives import ChoiceBCE as ChoiceBCE
from ._recovery import RecoveryData as RecoveryData
from ._recovery import RuleRecovery as RuleRecovery
from ._recovery import recover_rule as recover_rule
from ._recovery import recovery_data as recovery_data
from ._replay import Replay as Replay
from ._replay import choice_log_likelihood as choice_log_likelihood
from ._replay import choice_logits as choice_logits
from ._replay import replay as replay
from ._sensitivities import ChoiceSensitivities as ChoiceSensitivities
from ._task import OperantTask as OperantTask
from ._task import TaskState as TaskState
from ._task import bait as bait
from ._task import collect_reward as collect_reward


register_differentiation(ChoiceSensitivities())


__all__ = [
    "FACTORS",
    "DEFAULT_DRAWS",
    "ChoiceDataset",
    "NoisyChoices",
    "PackedChoiceDataset",
    "expected_reward",
    "marginal_logits",
    "MLP_STUDENT_SCALE",
    "TAYLOR_STUDENT_SCALE",
    "mlp_student",
    "mlp_students",
    "stack_members",
    "stack_rules",
    "taylor_student",
    "taylor_students",
    "GeneratedBehaviour",
    "OperantEnvironment",
    "encode_odours",
    "generate_behaviour",
    "compare_behaviour",
    "null_network",
    "percent_deviance",
    "DEFAULT_INPUT_VARIANCE",
    "REWARD_SIGNALS",
    "MushroomBody",
    "OdourEncoding",
    "ChoiceActivity",
    "ChoiceActivityDataset",
    "ChoiceBCE",
    "RecoveryData",
    "RuleRecovery",
    "recover_rule",
    "recovery_data",
    "Replay",
    "choice_log_likelihood",
    "choice_logits",
    "replay",
    "ChoiceSensitivities",
    "OperantTask",
    "TaskState",
    "bait",
    "collect_reward",
]
