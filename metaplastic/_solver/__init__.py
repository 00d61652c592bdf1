from ._base import AbstractSolver as AbstractSolver
from ._base import Objective as Objective
from ._levenberg_marquardt import LevenbergMarquardt as LevenbergMarquardt
from ._optax import Optax as Optax
