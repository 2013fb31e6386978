import json, sys
for d in sys.argv[1:]:
    try:
        m = json.load(open(d + "/metrics_test_beam3.json"))["overall"]
        h = json.load(open(d + "/hallucination_test_beam3.json"))
    except FileNotFoundError:
        print(d, "not done"); continue
    p = h["probes"]
    g = json.load(open(d + "/explanations_test_beam3.json"))["grounding"].get("lrp", {}).get("thresholds", {}).get("0.0", {}).get("value")
    print(f"{d}: B4 {m['Bleu_4']:.3f} M {m['METEOR']:.3f} R {m['ROUGE_L']:.3f} C {m['CIDEr']:.3f} | CHAIRs {h['chair']['overall']['CHAIRs']:.3f} CHAIRi {h['chair']['overall']['CHAIRi']:.3f} | probes CHAIRs {h['chair_probes']['overall']['CHAIRs']:.3f} rate {p['rate']:.3f} {[round(x,3) for x in p['rate_ci']]} control {p['control_rate']:.3f} n={p['images']} | F1 {h['frequent_words']['overall']['f1']['value']:.3f} | ground {g if g is None else round(g,3)}")
    if "-v" in sys.argv[0:1] or len(sys.argv) == 2:
        for k, v in p["pairs"].items(): print("   ", k, round(v["rate"], 3), v["images"], round(v.get("control_rate") or 0, 3))
