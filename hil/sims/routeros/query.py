"""`print` query words, evaluated as the API page ("Queries") documents them.

A query is evaluated per item with a stack of booleans that starts as an infinite
run of `true`. The item is returned when, at the end, no value on the stack is false.

    ?name        push true if the item has a value for `name`
    ?-name       push true if the item has no value for `name`
    ?name=x      push true if `name` equals x   (also written ?=name=x)
    ?<name=x     push true if `name` is less than x
    ?>name=x     push true if `name` is greater than x
    ?#ops        stack operations, read left to right:
                 digits then another character: push a copy of the value at that index
                 digits then end of word: replace all values with the value at that index
                 ! negates the top value; & and | pop two values and push and/or;
                 . after an index does nothing, after anything else pushes a copy of top.

Index 0 is the top of the stack. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence

Normalise = Callable[[str, str], str]


def _identity(_name: str, value: str) -> str:
    return value


def _order_key(value: str) -> tuple[int, object]:
    try:
        return (0, int(value))
    except ValueError:
        pass
    try:
        addr = value.split("/")[0]
        return (1, int(ipaddress.ip_address(addr)))
    except ValueError:
        return (2, value)


def _less(a: str, b: str) -> bool:
    ka, kb = _order_key(a), _order_key(b)
    if ka[0] != kb[0]:
        return a < b
    return ka[1] < kb[1]  # type: ignore[operator]


class _Stack:
    """The documented stack: reads below the bottom yield the implicit `true`s."""

    def __init__(self) -> None:
        self.values: list[bool] = []

    def push(self, v: bool) -> None:
        self.values.append(v)

    def pop(self) -> bool:
        return self.values.pop() if self.values else True

    def at(self, index: int) -> bool:
        return self.values[-1 - index] if index < len(self.values) else True


def _run_ops(stack: _Stack, ops: str) -> None:
    i = 0
    while i < len(ops):
        ch = ops[i]
        if ch.isdigit():
            j = i
            while j < len(ops) and ops[j].isdigit():
                j += 1
            value = stack.at(int(ops[i:j]))
            if j == len(ops):
                stack.values = [value]
                return
            stack.push(value)
            if ops[j] == ".":
                j += 1  # "." after an index does nothing
            i = j
            continue
        if ch == "!":
            stack.push(not stack.pop())
        elif ch == "&":
            b, a = stack.pop(), stack.pop()
            stack.push(a and b)
        elif ch == "|":
            b, a = stack.pop(), stack.pop()
            stack.push(a or b)
        elif ch == ".":
            stack.push(stack.at(0))
        # Other characters: the page does not say; they are ignored here.
        i += 1


def matches(
    item: Mapping[str, str], query: Sequence[str], normalise: Normalise = _identity
) -> bool:
    """True when `item` passes the query words (each word still carries its leading '?')."""
    stack = _Stack()
    for word in query:
        body = word[1:]
        if body.startswith("#"):
            _run_ops(stack, body[1:])
            continue
        op = "="
        if body[:1] in ("<", ">", "="):
            op, body = body[0], body[1:]
        elif body.startswith("-"):
            stack.push(body[1:] not in item)
            continue
        if "=" not in body:
            stack.push(body in item)
            continue
        name, value = body.split("=", 1)
        if name not in item:
            stack.push(False)
            continue
        have, want = item[name], normalise(name, value)
        if op == "=":
            stack.push(have == want)
        elif op == "<":
            stack.push(_less(have, want))
        else:
            stack.push(_less(want, have))
    return all(stack.values)
