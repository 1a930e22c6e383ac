"""reasoning-gym tasks: `data.task: rg:<name>` trains on any of its ~100 procedural generators.

    >>> task = load_task("rg:knights_knaves", {"n_people": 3})
    >>> ex = next(task.stream(seed=0))          # {"question": ..., "answer": ..., "metadata": {...}}
    >>> task.rewards()["answer"]("...</think>\\n<answer>Zoey is a knight</answer>", ex)   # (1.0, "correct")

Each generator is indexed (entry i of seed s is always the same problem) and comes with its own
verifier, `score_answer(answer, entry)`. The `answer` reward applies that verifier to the last
`<answer>...</answer>` of a completion; the protocol's `think_format` is the format reward. The
generator's settings (its config dataclass, less `seed` and `size`, which r1lite owns) go under
`data.<name>` in a recipe and are checked by reasoning-gym's own `validate()`.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import json
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, create_model, model_validator

from r1lite.tasks import Example, ExampleError, Task, TaskError

OWNED = ("seed", "size")  # r1lite sets these: data.seed and the split sizes

# Every generator whose entries, generated outside r1lite and sent through JSON (as our data files and
# `r1lite score` do), score 1.0 with `<answer>{entry["answer"]}</answer>` and below 1.0 with another
# entry's answer (tests/test_tasks.py checks each). The others, and why:
#   arc_agi, rearc         the stored answer scores 0.05 once its entry has been through JSON
#   boxnet, graph_color, propositional_logic, rubiks_cube, rush_hour
#                          no single answer (answer is None); the verifier checks any valid one, so they
#                          train fine, but an answer-only warm-up and `tasks show` have nothing to show
#   composite              mixes other generators; it needs a list of them in its settings
#   game_of_life_halting   its verifier scores both True and False 1.0 on some entries
#   puzzle24               its verifier does not check which numbers an expression uses
VERIFIED = (
    "ab",
    "acre",
    "advanced_geometry",
    "aiw",
    "arc_1d",
    "base_conversion",
    "basic_arithmetic",
    "bf",
    "binary_alternation",
    "binary_matrix",
    "bitwise_arithmetic",
    "caesar_cipher",
    "calendar_arithmetic",
    "chain_sum",
    "circuit_logic",
    "codeio",
    "coin_flip",
    "color_cube_rotation",
    "complex_arithmetic",
    "count_bits",
    "count_primes",
    "countdown",
    "course_schedule",
    "cryptarithm",
    "decimal_arithmetic",
    "decimal_chain_sum",
    "dice",
    "emoji_mystery",
    "family_relationships",
    "figlet_font",
    "fraction_simplification",
    "futoshiki",
    "game_of_life",
    "gcd",
    "group_anagrams",
    "gsm_symbolic",
    "intermediate_integration",
    "isomorphic_strings",
    "jugs",
    "kakurasu",
    "knight_swap",
    "knights_knaves",
    "largest_island",
    "lcm",
    "leg_counting",
    "letter_counting",
    "letter_jumble",
    "list_functions",
    "mahjong_puzzle",
    "manipulate_matrix",
    "maze",
    "mini_sudoku",
    "modulo_grid",
    "n_queens",
    "needle_haystack",
    "number_filtering",
    "number_format",
    "number_sequence",
    "number_sorting",
    "palindrome_generation",
    "palindrome_partitioning",
    "path_star",
    "polynomial_equations",
    "polynomial_multiplication",
    "pool_matrix",
    "power_function",
    "prime_factorization",
    "products",
    "quantum_lock",
    "ransom_note",
    "rectangle_count",
    "rotate_matrix",
    "rotten_oranges",
    "self_reference",
    "sentence_reordering",
    "shortest_path",
    "simple_equations",
    "simple_geometry",
    "simple_integration",
    "sokoban",
    "spell_backward",
    "spiral_matrix",
    "string_insertion",
    "string_manipulation",
    "string_splitting",
    "string_synthesis",
    "sudoku",
    "survo",
    "syllogism",
    "time_intervals",
    "tower_of_hanoi",
    "tsumego",
    "word_ladder",
    "word_sequence_reversal",
    "word_sorting",
    "zebra_puzzles",
)


def _registry() -> dict[str, tuple[type, type]]:
    try:
        from reasoning_gym.factory import DATASETS
    except ImportError:
        raise TaskError("rg:<name> tasks need reasoning-gym: pip install reasoning-gym (make install does)") from None
    return DATASETS


def names() -> list[str]:
    """Every generator reasoning-gym lists."""
    return sorted(_registry())


def jsonable(value: Any) -> Any:
    """Plain JSON types all the way down (numpy scalars and strings, tuples, sets): what a data file holds."""
    return json.loads(json.dumps(value, default=_plain))


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalar
        return value.item()
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


def _settings_model(name: str, config: type) -> type[BaseModel]:
    """A pydantic model of the generator's config fields (minus seed and size) that reasoning-gym validates."""
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        if f.name in OWNED or not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            continue  # required without a default: reasoning-gym's own check names it
        fields[f.name] = (Any, jsonable(default))

    def check(self: BaseModel) -> BaseModel:
        try:
            make_config(config, self.model_dump(), seed=0, size=1)
        except (AssertionError, ValueError, TypeError) as e:
            raise ValueError(f"reasoning-gym rejects these {name} settings: {e or type(e).__name__}") from None
        return self

    return create_model(
        f"{name}_settings",
        __config__=ConfigDict(extra="forbid"),
        __validators__={"check": model_validator(mode="after")(check)},
        **fields,
    )


def _restore(default: Any, value: Any) -> Any:
    """A JSON/YAML value back in the type of the dataclass's default: tuples and enums do not survive JSON."""
    if isinstance(default, tuple) and isinstance(value, list):
        return tuple(value)
    if isinstance(default, enum.Enum) and not isinstance(value, enum.Enum):
        return type(default)(value)
    return value


def make_config(config: type, settings: dict[str, Any], seed: int, size: int) -> Any:
    """The generator's config from our (JSON-typed) settings, validated by reasoning-gym."""
    defaults = {f.name: f.default for f in dataclasses.fields(config) if f.default is not dataclasses.MISSING}
    values = {k: _restore(defaults.get(k), v) for k, v in settings.items()}
    cfg = config(**values, seed=seed, size=size)
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


class ReasoningGymTask(Task):
    """A reasoning-gym generator and its verifier (subclassed once per generator by `reasoning_gym_task`)."""

    rg_name: str = ""
    fields = ("question", "answer", "metadata")

    def __init__(self, settings: Any = None) -> None:
        super().__init__(settings)
        dataset_cls, config = _registry()[self.rg_name]
        self._dataset_cls, self._config = dataset_cls, config
        # one instance scores every entry; rg's own get_score_answer_fn does the same with defaults
        self._scorer = dataset_cls(config=make_config(config, self.settings.model_dump(), seed=0, size=1))

    def dataset(self, seed: int, size: int) -> Any:
        return self._dataset_cls(config=make_config(self._config, self.settings.model_dump(), seed=seed, size=size))

    def stream(self, seed: int) -> Iterator[Example]:
        """Entries 0, 1, 2, ... of the generator at `seed` (each a fixed function of seed and index)."""
        size, start = 4_096, 0
        while True:  # a dataset's size only bounds its index; grow it instead of guessing the total
            ds = self.dataset(seed, start + size)
            for i in range(start, start + size):
                yield jsonable(ds[i])
            start, size = start + size, size * 2

    def sample(self, rng: Any) -> Example:
        return jsonable(self.dataset(rng.randrange(2**31), 1)[0])

    def from_row(self, row: dict[str, Any]) -> Example | None:
        """An entry from a file or the hub; tables often store `metadata` as a JSON string."""
        if any(k not in row for k in self.fields):
            raise ExampleError(
                f"needs {', '.join(repr(k) for k in self.fields)} (a reasoning-gym entry); got {sorted(row)}"
            )
        metadata = row["metadata"]
        if isinstance(metadata, str):
            try:
                metadata = json.loads(metadata)
            except json.JSONDecodeError:
                raise ExampleError("'metadata' is a string but not JSON") from None
        return {"question": row["question"], "answer": row["answer"], "metadata": metadata}

    def check(self, answer: str, example: Example) -> tuple[float, str]:
        try:
            score = float(self._scorer.score_answer(answer.strip(), example))
        except Exception as e:  # a verifier that crashes on odd text has said: not right
            return 0.0, f"reasoning-gym's verifier failed on it ({type(e).__name__})"
        if score >= 1.0:
            return 1.0, "correct"
        return score, f"reasoning-gym scores it {score:.3g}"

    def answer(self, example: Example) -> str:
        answer = example.get("answer")
        if answer is None:
            raise TaskError(
                f"rg:{self.rg_name} entries have no single answer (any valid one scores); no answer-only warm-up"
            )
        return str(answer)

    def public(self, example: Example) -> dict[str, Any]:
        return {"question": example["question"], "answer": example.get("answer")}


@functools.cache
def reasoning_gym_task(name: str) -> type[Task]:
    """The Task class for reasoning-gym's generator `name`."""
    registry = _registry()
    if name not in registry:
        close = difflib.get_close_matches(name, registry, n=1)
        hint = f"did you mean 'rg:{close[0]}'?" if close else "r1lite tasks list shows every name"
        raise TaskError(f"reasoning-gym has no generator '{name}'; {hint}")
    dataset_cls, config = registry[name]
    doc = (dataset_cls.__doc__ or "").strip().splitlines()
    return type(
        f"RG_{name}",
        (ReasoningGymTask,),
        {
            "name": name,
            "rg_name": name,
            "slug": f"rg-{name}",
            "description": doc[0] if doc else f"reasoning-gym's {name}",
            "Settings": _settings_model(name, config),
            "__module__": __name__,
        },
    )
