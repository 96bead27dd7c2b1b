"""Compare candidate checkpoint-level statistics on the zoo's saved scans (AUROC, clean maxima).

Run after `python benchmarks/run.py zoo`: `python benchmarks/verdict_calibration.py`.
Statistics: maxrz = largest per-layer robust z (median/MAD); maxraw = largest raw score (EP: lowest
entropy, negated); maxz = largest per-layer z; maxlogrz = robust z of log scores; medrz = median over
layers of each layer's largest robust z.
"""
import json,glob,math,statistics as st
from bdprune.verdict import robust_z
models={}
for f in glob.glob("benchmarks/cache/models/*.json"):
    d=json.load(open(f)); models[d["name"]]=d
def auroc(pos,neg):
    s=0
    for p in pos:
        for n in neg: s+= 1 if p>n else 0.5 if p==n else 0
    return s/(len(pos)*len(neg))
def stats(d):
    low=d["low_is_suspicious"]; out={}
    rz=[];lrz=[];maxraw=[]
    for L in d["layers"]:
        s=L["scores"]
        if len(s)<8: continue
        rz.append(max(robust_z(s,low)))
        if not low:
            lrz.append(max(robust_z([math.log(max(x,1e-12)) for x in s],False)))
        maxraw.append(max(s) if not low else -min(s))
    out["maxrz"]=max(rz); out["maxraw"]=max(maxraw); out["maxz"]=max(max(L["z"]) for L in d["layers"])
    if lrz: out["maxlogrz"]=max(lrz)
    out["medrz"]=st.median(rz)
    return out
for m in ["bnp","ep","clp"]:
    rows=[]
    for f in glob.glob(f"benchmarks/cache/scans/*__{m}.json"):
        name=f.split("/")[-1].split("__")[0]; info=models[name]
        if info["attack"]!="clean" and (info["asr"] or 0)<50: continue
        rows.append((info["attack"]!="clean", stats(json.load(open(f))), name))
    for key in rows[0][1]:
        pos=[r[1][key] for r in rows if r[0]]; neg=[r[1][key] for r in rows if not r[0]]
        print(m,key,"AUROC %.2f"%auroc(pos,neg),"clean max %.3g"%max(neg),"bd min %.3g"%min(pos), "bd med %.3g"%st.median(pos))
