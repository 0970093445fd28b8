"""One Task per dataset (prompt format, examples, reward, evaluate), shared by RL prompts,
preference building, SFT data and `llmlab eval`."""

from llmlab.tasks.arithmetic import ARITHMETIC, ARITHMETIC_EASY
from llmlab.tasks.base import Task
from llmlab.tasks.humaneval import HUMANEVAL
from llmlab.tasks.pydocs import PYDOCS
from llmlab.tasks.trivia import TRIVIA

TASKS: dict[str, Task] = {t.name: t for t in (ARITHMETIC, ARITHMETIC_EASY, TRIVIA, PYDOCS,
                                               HUMANEVAL)}
