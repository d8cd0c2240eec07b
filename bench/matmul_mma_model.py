#!/usr/bin/env python3
"""A numpy model of native/backends/cuda/matmul_mma.cu's fragment mapping (one warp, one
superblock), checked against the CPU's integer sums (sum_q, and Q4_K's sum_mins) computed
straight from random blocks: ldmatrix (8x16-byte matrices, lane L supplies row L % 8 of matrix
L / 8), the PTX fragment layouts of mma m16n8k32 u8 x s8, m16n8k16 s8 x s8 and m16n8k16 f16,
the scale extraction and Q6_K's bit assembly, with the same shared-memory strides and addresses
as the kernel. Written before the first device call (run 12-rectmmq); runs on the CPU in a second.

    python3 bench/matmul_mma_model.py
"""
import numpy as np
rng = np.random.default_rng(0)
kQ4Row, kTokRow, kBsumRow = 144, 272, 32
kQ6Ql, kQ6Qh, kQ6Sc, kQ6D = 144, 80, 16, 4

def u32(buf, off):
    return int.from_bytes(bytes(buf[off:off+4]), 'little')

def ldsm_x4(smem, addrs):
    out = np.zeros((32, 4), dtype=np.uint64)
    for L in range(32):
        for i in range(4):
            row_addr = addrs[8*i + L//4]
            out[L, i] = u32(smem, row_addr + 4*(L % 4))
    return out

def bytes_of(x, signed):
    b = [(int(x) >> (8*j)) & 0xff for j in range(4)]
    if signed: b = [v - 256 if v >= 128 else v for v in b]
    return b

def imma_k32(a, b, a_signed=False):  # a [32][4], b [32][2] -> c [32][4]
    A = np.zeros((16, 32), np.int64); B = np.zeros((32, 8), np.int64)
    for L in range(32):
        g, t = L >> 2, L & 3
        for r, (row, k0) in enumerate(((g, 4*t), (g+8, 4*t), (g, 4*t+16), (g+8, 4*t+16))):
            A[row, k0:k0+4] = bytes_of(a[L][r], a_signed)
        B[4*t:4*t+4, g] = bytes_of(b[L][0], True)
        B[4*t+16:4*t+20, g] = bytes_of(b[L][1], True)
    C = A @ B
    return np.array([[C[L>>2, 2*(L&3)], C[L>>2, 2*(L&3)+1], C[(L>>2)+8, 2*(L&3)], C[(L>>2)+8, 2*(L&3)+1]] for L in range(32)])

def imma_k16(a, b):  # s8.s8, a [32][2], b [32] -> c
    A = np.zeros((16, 16), np.int64); B = np.zeros((16, 8), np.int64)
    for L in range(32):
        g, t = L >> 2, L & 3
        A[g, 4*t:4*t+4] = bytes_of(a[L][0], True)
        A[g+8, 4*t:4*t+4] = bytes_of(a[L][1], True)
        B[4*t:4*t+4, g] = bytes_of(b[L], True)
    C = A @ B
    return np.array([[C[L>>2, 2*(L&3)], C[L>>2, 2*(L&3)+1], C[(L>>2)+8, 2*(L&3)], C[(L>>2)+8, 2*(L&3)+1]] for L in range(32)])

def h2(x):
    return [float(np.array([int(x) & 0xffff], np.uint16).view(np.float16)[0]), float(np.array([int(x) >> 16], np.uint16).view(np.float16)[0])]

def hmma(a, b):  # a [32][4] half2 regs, b [32][2]
    A = np.zeros((16, 16)); B = np.zeros((16, 8))
    for L in range(32):
        g, t = L >> 2, L & 3
        A[g, 2*t:2*t+2] = h2(a[L][0]); A[g+8, 2*t:2*t+2] = h2(a[L][1])
        A[g, 2*t+8:2*t+10] = h2(a[L][2]); A[g+8, 2*t+8:2*t+10] = h2(a[L][3])
        B[2*t:2*t+2, g] = h2(b[L][0]); B[2*t+8:2*t+10, g] = h2(b[L][1])
    C = A @ B
    return np.array([[C[L>>2, 2*(L&3)], C[L>>2, 2*(L&3)+1], C[(L>>2)+8, 2*(L&3)], C[(L>>2)+8, 2*(L&3)+1]] for L in range(32)])

def byte_perm(x, y, s):
    bs = [(x >> (8*j)) & 0xff for j in range(4)] + [(y >> (8*j)) & 0xff for j in range(4)]
    r = 0
    for i in range(4):
        n = (s >> (4*i)) & 0xf
        v = bs[n & 7]
        if n & 8: v = 0xff if v & 0x80 else 0
        r |= v << (8*i)
    return r

def byte_to_h2x2(x, j):
    bits = byte_perm(x, 0x64, 0x4040 | j | (j << 8))
    h = np.array([bits & 0xffff, bits >> 16], np.uint16).view(np.float16).astype(np.float32) - 1024
    hb = h.astype(np.float16).view(np.uint16)
    return int(hb[0]) | (int(hb[1]) << 16)

def s16x2_to_h2(x):
    lo = x & 0xffff; lo = lo - 65536 if lo >= 32768 else lo
    hi = x >> 16; hi = hi - 65536 if hi >= 32768 else hi
    hb = np.array([lo, hi], np.float16).view(np.uint16)
    assert float(np.float16(lo)) == lo and float(np.float16(hi)) == hi
    return int(hb[0]) | (int(hb[1]) << 16)

# ---- CPU references -------------------------------------------------------------------------
def q4k_unpack(blk):  # blk 144 bytes
    sc_b = [int(v) for v in blk[4:16]]
    sc, m = [0]*8, [0]*8
    for j in range(8):
        if j < 4: sc[j] = sc_b[j] & 63; m[j] = sc_b[j+4] & 63
        else: sc[j] = (sc_b[j+4] & 0xF) | ((sc_b[j-4] >> 6) << 4); m[j] = (sc_b[j+4] >> 4) | ((sc_b[j] >> 6) << 4)
    q = np.zeros(256, np.int64)
    for c in range(4):
        for l in range(32):
            q[64*c + l] = int(blk[16 + 32*c + l]) & 0xF
            q[64*c + 32 + l] = int(blk[16 + 32*c + l]) >> 4
    return sc, m, q

def q6k_unpack(ql, qh):
    q = np.zeros(256, np.int64)
    for h in range(2):
        for l in range(32):
            ql0, ql1, qhv = int(ql[64*h + l]), int(ql[64*h + 32 + l]), int(qh[32*h + l])
            q[128*h + l] = (ql0 & 0xF) | ((qhv & 3) << 4)
            q[128*h + 32 + l] = (ql1 & 0xF) | (((qhv >> 2) & 3) << 4)
            q[128*h + 64 + l] = (ql0 >> 4) | (((qhv >> 4) & 3) << 4)
            q[128*h + 96 + l] = (ql1 >> 4) | (((qhv >> 6) & 3) << 4)
    return q

def check_q4k(MT, NT):
    BN = 16 * MT  # one warp's rows (warp 0)
    NP = 8 * NT
    W = rng.integers(0, 256, (BN, 144), dtype=np.uint8)
    A = rng.integers(-127, 128, (NP, 256)).astype(np.int8)
    bs = A.astype(np.int64).reshape(NP, 16, 16).sum(-1)
    st = np.zeros(BN * kQ4Row, np.uint8)
    for r in range(BN): st[r*kQ4Row:(r+1)*kQ4Row] = W[r]
    tk = np.zeros(NP * (kTokRow + 4 + kBsumRow), np.uint8)
    for m in range(NP):
        tk[m*kTokRow:m*kTokRow+256] = A[m].view(np.uint8)
        tk[NP*(kTokRow+4) + m*32: NP*(kTokRow+4) + m*32 + 32] = bs[m].astype(np.int16).view(np.uint8)
    r_base = 0
    for mt in range(MT):
        hdr = [[None]*2 for _ in range(32)]
        sc = np.zeros((32, 2, 2), np.int64); amin = np.zeros((32, 4), np.int64)
        for L in range(32):
            g, t = L >> 2, L & 3
            for i in range(2):
                off = (r_base + 16*mt + g + 8*i) * kQ4Row
                x, y, z, w = (u32(st, off + 4*j) for j in range(4))
                sc[L, i, 0] = y & 0x3f3f3f3f
                sc[L, i, 1] = (w & 0x0f0f0f0f) | ((y >> 2) & 0x30303030)
                m_lo = z & 0x3f3f3f3f
                m_hi = ((w >> 4) & 0x0f0f0f0f) | ((z >> 2) & 0x30303030)
                amin[L, i] = byte_to_h2x2(m_lo, t); amin[L, 2+i] = byte_to_h2x2(m_hi, t)
        isum = np.zeros((NT, 32, 4), np.int64)
        for c2 in range(2):
            for cc in range(2):
                c = 2*c2 + cc
                addrs = [(r_base + 16*mt + (L & 7) + 8*((L >> 3) & 1)) * kQ4Row + 16 + 32*c + 16*(L >> 4) for L in range(32)]
                R = ldsm_x4(st, addrs)
                alo = [[int(R[L, j]) & 0x0f0f0f0f for j in range(4)] for L in range(32)]
                ahi = [[(int(R[L, j]) >> 4) & 0x0f0f0f0f for j in range(4)] for L in range(32)]
                s0 = np.zeros((32, 2), np.int64); s1 = np.zeros((32, 2), np.int64)
                for L in range(32):
                    for i in range(2):
                        wsc = int(sc[L, i, 1] if c2 else sc[L, i, 0])
                        s0[L, i] = byte_perm(wsc, 0, 0x4440 | (2*cc)); s1[L, i] = byte_perm(wsc, 0, 0x4440 | (2*cc+1))
                for ni in range(NT):
                    baddr = [(8*ni + (L & 7)) * kTokRow + 64*c + 16*(L >> 3) for L in range(32)]
                    B = ldsm_x4(tk, baddr)
                    c0 = imma_k32(alo, [[B[L, 0], B[L, 1]] for L in range(32)])
                    c1 = imma_k32(ahi, [[B[L, 2], B[L, 3]] for L in range(32)])
                    for L in range(32):
                        for e in range(4):
                            isum[ni, L, e] += s0[L, e >> 1] * c0[L, e] + s1[L, e >> 1] * c1[L, e]
        for ni in range(NT):
            bm = []
            for L in range(32):
                g, t = L >> 2, L & 3
                off = NP*(kTokRow+4) + (8*ni + g)*32
                bm.append([s16x2_to_h2(u32(tk, off + 4*t)), s16x2_to_h2(u32(tk, off + 16 + 4*t))])
            cm = hmma(amin, bm)
            for L in range(32):
                g, t = L >> 2, L & 3
                for e in range(4):
                    row = r_base + 16*mt + g + 8*(e >> 1); tok = 8*ni + 2*t + (e & 1)
                    scs, ms, q = q4k_unpack(W[row])
                    a = A[tok].astype(np.int64)
                    sum_q = sum(scs[j] * int((q[32*j:32*j+32] * a[32*j:32*j+32]).sum()) for j in range(8))
                    sum_m = sum(ms[j] * int(bs[tok, 2*j] + bs[tok, 2*j+1]) for j in range(8))
                    assert isum[ni, L, e] == sum_q, (mt, ni, L, e, isum[ni, L, e], sum_q)
                    assert cm[L, e] == sum_m, (mt, ni, L, e, cm[L, e], sum_m)
    print(f"Q4_K MT={MT} NT={NT}: ok")

def check_q6k(MT, NT):
    BN = 16 * MT; NP = 8 * NT
    ql = rng.integers(0, 256, (BN, 128), dtype=np.uint8)
    qh = rng.integers(0, 256, (BN, 64), dtype=np.uint8)
    scb = rng.integers(-128, 128, (BN, 16)).astype(np.int8)
    A = rng.integers(-127, 128, (NP, 256)).astype(np.int8)
    st = np.zeros(BN * (kQ6Ql + kQ6Qh + kQ6Sc + kQ6D), np.uint8)
    for r in range(BN):
        st[r*kQ6Ql:r*kQ6Ql+128] = ql[r]
        st[BN*kQ6Ql + r*kQ6Qh: BN*kQ6Ql + r*kQ6Qh + 64] = qh[r]
        st[BN*(kQ6Ql+kQ6Qh) + r*16: BN*(kQ6Ql+kQ6Qh) + r*16 + 16] = scb[r].view(np.uint8)
    tk = np.zeros(NP * (kTokRow + 4), np.uint8)
    for m in range(NP): tk[m*kTokRow:m*kTokRow+256] = A[m].view(np.uint8)
    qh_s = BN * kQ6Ql; sc_s = qh_s + BN * kQ6Qh
    for mt in range(MT):
        scw = [[[u32(st, sc_s + (16*mt + (L >> 2) + 8*i)*16 + 4*j) for j in range(4)] for i in range(2)] for L in range(32)]
        isum = np.zeros((NT, 32, 4), np.int64)
        for h in range(2):
            addrs = [qh_s + (16*mt + (L & 7) + 8*((L >> 3) & 1)) * kQ6Qh + 32*h + 16*(L >> 4) for L in range(32)]
            QH = ldsm_x4(st, addrs)
            for gp in range(2):
                addrs = [(16*mt + (L & 7) + 8*((L >> 3) & 1)) * kQ6Ql + 64*h + 32*(L >> 4) + 16*gp for L in range(32)]
                Q = ldsm_x4(st, addrs)
                a = np.zeros((32, 4, 2), np.int64); s = np.zeros((32, 4, 2), np.int64)
                for L in range(32):
                    for k in range(4):
                        for i in range(2):
                            src = int(Q[L, 2*(k & 1) + i])
                            lo = (src if k < 2 else src >> 4) & 0x0f0f0f0f
                            hq = int(QH[L, 2*gp + i])
                            x = ((hq << 4) if k == 0 else (hq << 2) if k == 1 else hq if k == 2 else (hq >> 2)) & 0x30303030
                            a[L, k, i] = ((lo + x + 0x60606060) & 0xffffffff) ^ 0x80808080
                            w = scw[L][i]
                            sw = (w[2] if h else w[0]) if k < 2 else (w[3] if h else w[1])
                            v = (sw >> (8*(2*(k & 1) + gp))) & 0xff
                            s[L, k, i] = v - 256 if v >= 128 else v
                for ni in range(NT):
                    baddr = [(8*ni + (L & 7)) * kTokRow + 16*(8*h + 2*(L >> 3) + gp) for L in range(32)]
                    B = ldsm_x4(tk, baddr)
                    for k in range(4):
                        c = imma_k16([[a[L, k, 0], a[L, k, 1]] for L in range(32)], [B[L, k] for L in range(32)])
                        for L in range(32):
                            for e in range(4):
                                isum[ni, L, e] += s[L, k, e >> 1] * c[L, e]
        for ni in range(NT):
            for L in range(32):
                g, t = L >> 2, L & 3
                for e in range(4):
                    row = 16*mt + g + 8*(e >> 1); tok = 8*ni + 2*t + (e & 1)
                    q = q6k_unpack(ql[row], qh[row])
                    av = A[tok].astype(np.int64)
                    bsum = av.reshape(16, 16).sum(-1)
                    ref = sum(int(scb[row, gg]) * (int((q[16*gg:16*gg+16] * av[16*gg:16*gg+16]).sum()) - 32 * int(bsum[gg])) for gg in range(16))
                    assert isum[ni, L, e] == ref, (mt, ni, L, e, isum[ni, L, e], ref)
    print(f"Q6_K MT={MT} NT={NT}: ok")

if __name__ == "__main__":
    for mt, nt in ((2, 2), (1, 3)):
        check_q4k(mt, nt)
        check_q6k(mt, nt)
