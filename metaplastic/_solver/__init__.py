from ._base import AbstractSolver as AbstractSolver, Objective as Objective
from ._levenberg_marquardt import LevenbergMarquardt as LevenbergMarquardt
from ._optax import Optax as Optax
