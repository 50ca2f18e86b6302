"""The instruction encoding both the metering instrumenter and the structure limits walk.

:data:`KINDS` maps each one-byte opcode to the kind of immediates that follow it (``BAD`` for
opcodes the host does not accept); :data:`FC_IMMEDIATES` gives the index immediates of each
accepted ``0xFC`` sub-opcode. One table, so the two walkers of function bodies cannot disagree
on where an instruction ends.
"""

from __future__ import annotations

# Immediate kinds of one-byte opcodes.
BAD, NONE, LEB, LEB2, BLOCK, LOOP, END, CALL, BRTABLE = range(9)
F32, F64, SELECTT, MEMARG, PREFIX_FC = range(9, 14)


def _opcode_table() -> list[int]:
    kinds = [BAD] * 256
    for op in (0x00, 0x01, 0x05, 0x0F, 0x1A, 0x1B, 0xD1):
        kinds[op] = NONE  # unreachable nop else return drop select ref.is_null
    kinds[0x02] = kinds[0x04] = BLOCK  # block if
    kinds[0x03] = LOOP
    kinds[0x0B] = END
    kinds[0x0C] = kinds[0x0D] = LEB  # br br_if
    kinds[0x0E] = BRTABLE
    kinds[0x10] = kinds[0x12] = kinds[0xD2] = CALL  # call return_call ref.func
    kinds[0x11] = kinds[0x13] = LEB2  # call_indirect return_call_indirect: type, table
    kinds[0x1C] = SELECTT
    for op in range(0x20, 0x27):
        kinds[op] = LEB  # local.* global.* table.get table.set
    for op in range(0x28, 0x3F):
        kinds[op] = MEMARG  # loads and stores
    kinds[0x3F] = kinds[0x40] = LEB  # memory.size memory.grow (memory index)
    kinds[0x41] = kinds[0x42] = LEB  # i32.const i64.const
    kinds[0x43] = F32
    kinds[0x44] = F64
    for op in range(0x45, 0xC5):
        kinds[op] = NONE  # numeric operators incl. sign extension 0xC0-0xC4
    kinds[0xD0] = LEB  # ref.null heap type
    kinds[0xFC] = PREFIX_FC
    return kinds


KINDS = _opcode_table()

#: Number of index immediates of each accepted 0xFC sub-opcode.
FC_IMMEDIATES: dict[int, int] = {
    **{sub: 0 for sub in range(8)},  # saturating truncations
    8: 2,  # memory.init data, memory
    9: 1,  # data.drop
    10: 2,  # memory.copy
    11: 1,  # memory.fill
    12: 2,  # table.init elem, table
    13: 1,  # elem.drop
    14: 2,  # table.copy
    15: 1,  # table.grow
    16: 1,  # table.size
    17: 1,  # table.fill
}
