"""Safe arithmetic for reward checking: `evaluate("(1 + 2) / 3") -> 1.0`, never `eval()`.

Why our own parser: model output is untrusted text, and Python's `eval` (what TinyZero uses) both
runs code and accepts more than Countdown allows (`**`, `//`, unary `+`). This parser accepts
numbers, binary `+ - * /`, unary minus and parentheses, and computes with Python's own int/float
operators so results are bit-identical to what `eval` would return for the same text.

It is iterative (shunting-yard), so hostile input such as 5,000 nested parentheses cannot exhaust
the stack; like CPython's parser, it refuses nesting deeper than 200 and more than 1,000 tokens.
"""

from __future__ import annotations

import re

MAX_DEPTH = 200  # CPython's tokenizer refuses deeper parenthesis nesting, so eval() fails too
MAX_TOKENS = 1000  # a real Countdown answer has < 40 tokens; the cap bounds the time per call
MAX_DIGITS = 100  # a Countdown literal has at most 3; longer ones only cost time (and Python refuses > 4,300)
MAX_VALUE = 10.0**100  # no intermediate value of a real answer comes near; bounds big-int work and float overflow

_TOKENS = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+|[-+*/()]|\S")
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2, "neg": 3}


class ExpressionError(ValueError):
    """The text is not an expression we accept, or it divides by zero."""


def _number(text: str) -> int | float:
    whole = text.split(".", 1)[0]
    if len(whole) > 1 and whole[0] == "0":
        raise ExpressionError(f"leading zero in literal {text!r}")
    if len(text) > MAX_DIGITS:
        raise ExpressionError(f"a number literal longer than {MAX_DIGITS} digits")
    return float(text) if "." in text else int(text)


def tokenize(text: str) -> list[str | int | float]:
    """Split into numbers and operator characters; anything else raises."""
    if sum(text.count(c) for c in "+-*/()") >= MAX_TOKENS:  # C-speed bound before any Python loop
        raise ExpressionError(f"expression longer than {MAX_TOKENS} tokens")
    tokens: list[str | int | float] = []
    for tok in _TOKENS.findall(text):
        if tok[0] in "0123456789.":
            if tok == ".":
                raise ExpressionError("a lone '.'")
            tokens.append(_number(tok))
        elif tok in "+-*/()":
            tokens.append(tok)
        else:
            raise ExpressionError(f"unexpected character {tok!r}")
    if len(tokens) > MAX_TOKENS:
        raise ExpressionError(f"expression longer than {MAX_TOKENS} tokens")
    return tokens


def _apply(op: str, stack: list[int | float]) -> None:
    if op == "neg":
        stack.append(-stack.pop())
        return
    right, left = stack.pop(), stack.pop()
    if op == "+":
        stack.append(left + right)
    elif op == "-":
        stack.append(left - right)
    elif op == "*":
        stack.append(left * right)
    elif right == 0:
        raise ExpressionError("division by zero")
    else:
        try:
            stack.append(left / right)
        except OverflowError:  # a huge int divided: the quotient has no float
            raise ExpressionError("a value too large to compute") from None
    if abs(stack[-1]) > MAX_VALUE:
        raise ExpressionError(f"an intermediate value beyond {MAX_VALUE:.0e}")


def evaluate(text: str) -> int | float:
    """Value of an arithmetic expression, computed as Python's `eval` would; raises on anything else."""
    values: list[int | float] = []
    ops: list[str] = []
    expect_operand, depth = True, 0
    for tok in tokenize(text):
        if not isinstance(tok, str):
            if not expect_operand:
                raise ExpressionError("two numbers in a row")
            values.append(tok)
            expect_operand = False
        elif expect_operand:
            if tok == "(":
                depth += 1
                if depth > MAX_DEPTH:
                    raise ExpressionError(f"parentheses nested deeper than {MAX_DEPTH}")
                ops.append(tok)
            elif tok == "-":
                ops.append("neg")  # prefix and right-associative: pops nothing
            else:
                raise ExpressionError(f"operator {tok!r} where a number belongs")
        elif tok == ")":
            while ops and ops[-1] != "(":
                _apply(ops.pop(), values)
            if not ops:
                raise ExpressionError("unbalanced ')'")
            ops.pop()
            depth -= 1
        elif tok == "(":
            raise ExpressionError("'(' after a value (implicit multiplication or a call)")
        else:
            while ops and ops[-1] != "(" and _PRECEDENCE[ops[-1]] >= _PRECEDENCE[tok]:
                _apply(ops.pop(), values)
            ops.append(tok)
            expect_operand = True
    if expect_operand:
        raise ExpressionError("expression is empty or ends with an operator")
    while ops:
        op = ops.pop()
        if op == "(":
            raise ExpressionError("unbalanced '('")
        _apply(op, values)
    return values[0]
