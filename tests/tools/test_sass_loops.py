"""tools/gpu/sass_loops.py: the SASS listing parser and loop finder (no toolkit needed)."""
from tools.gpu import sass_loops

LISTING = """
        Function : _Z6kernelPf
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   S2R R0, SR_TID.X ;
        /*0020*/                   MUFU.EX2 R2, R0 ;
        /*0030*/              @!P0 SHFL.UP PT, R3, R2, 0x1, RZ ;
        /*0040*/                   LDG.E R4, desc[UR4][R6.64] ;
        /*0050*/               @P1 BRA 0x20 ;
        /*0060*/                   BRA.DIV UR4, 0x10 ;
        /*0070*/                   REDG.E.ADD.F32.FTZ.RN.STRONG.GPU desc[UR4][R6.64], R2 ;
        /*0080*/                   BRA 0x90 ;
        /*0090*/                   EXIT ;
        Function : _Z5otherv
        /*0000*/                   EXIT ;
"""


def test_kernels_split_by_function():
    found = list(sass_loops.kernels(LISTING))
    assert [name for name, _ in found] == ["_Z6kernelPf", "_Z5otherv"]
    assert len(found[0][1]) == 10 and found[0][1][2] == (0x20, "MUFU.EX2 R2, R0")


def test_opcode_strips_predicates_and_modifiers():
    assert sass_loops.opcode("@!P0 SHFL.UP PT, R3, R2, 0x1, RZ") == "SHFL"
    assert sass_loops.opcode("@P1 BRA 0x20") == "BRA"
    assert sass_loops.opcode("@!UP2 LDG.E R4, desc[UR4][R6.64]") == "LDG"
    assert sass_loops.opcode("REDG.E.ADD.F32.FTZ.RN.STRONG.GPU desc[UR4][R6.64], R2") == "REDG"


def test_loops_are_backward_branches_only():
    ins = dict(sass_loops.kernels(LISTING))["_Z6kernelPf"]
    found = list(sass_loops.loops(ins))
    # the predicated BRA back to 0x20 is the one loop; BRA.DIV and the forward BRA are not loops
    assert [(s, e) for s, e, _ in found] == [(0x20, 0x50)]
    ops = found[0][2]
    assert (ops["MUFU"], ops["SHFL"], ops["LDG"], ops["BRA"], sum(ops.values())) == (1, 1, 1, 1, 4)
