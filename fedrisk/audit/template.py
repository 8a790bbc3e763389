"""The jinja2 template of audit.html (a Python string, so it ships inside the package)."""

TEMPLATE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>fedrisk privacy audit {{ doc.run_id }}</title>
<style>
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;
max-width:1180px;color:#222;font-size:14px;line-height:1.4}
h1{font-size:24px;margin-bottom:4px}h2{border-bottom:2px solid #4c78a8;padding-bottom:3px;
margin-top:30px;font-size:19px}h3{font-size:15px;margin-bottom:4px}
table{border-collapse:collapse;margin:8px 0;font-size:12.5px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right;vertical-align:top}
th{background:#eef2f7}td.l,th.l{text-align:left}
.pass{color:#1a7f37;font-weight:600}.fail{color:#fff;background:#d62728;font-weight:700;
padding:1px 5px;border-radius:3px}.na{color:#777}
.banner{padding:10px 14px;border-radius:6px;margin:10px 0;font-weight:600}
.banner.ok{background:#e6f4ea;border:1px solid #1a7f37}.banner.bad{background:#fde7e7;
border:1px solid #d62728;color:#a00}.banner.np{background:#fff4e0;border:1px solid #f28e2b}
img{max-width:100%;border:1px solid #ddd;margin:6px 0}.note{color:#555;font-size:12.5px}
ul{margin-top:2px}code{background:#f3f3f3;padding:0 3px}
</style></head><body>
<h1>fedrisk privacy audit</h1>
<div class="note">run <code>{{ doc.run_id }}</code> · {{ doc.privacy }} · {{ doc.run_dir }} ·
created {{ doc.created }} · audit took {{ doc.reproducibility.seconds }} s</div>
{% set impl_ok = doc.implementation_check.passed or not doc.implementation_check.applicable %}
{% if not doc.dp and doc.claimed_epsilon is none %}
<div class="banner np">NON-PRIVATE baseline: no DP claim to audit; attack results show what an
unprotected model leaks.</div>
{% elif doc.audit_passed and impl_ok %}
<div class="banner ok">PASSED: every bank's empirical ε lower bounds (canary audit and attacks)
are at most its claimed ε{% if doc.claimed_epsilon is not none %} ({{ doc.claimed_epsilon|f }},
given with --claimed-epsilon){% endif %}{% if doc.implementation_check.applicable %}, and the
implementation check passed{% endif %}.</div>
{% else %}
<div class="banner bad">FAILED:
{% if doc.canary_audit and doc.canary_audit.passed is false %}a one-run canary audit proves a
bank's mechanism is less private than claimed
{%- if doc.claimed_epsilon is not none %} (claimed ε {{ doc.claimed_epsilon|f }}, given with
--claimed-epsilon){% endif %}.
{% elif doc.audit_passed is false %}an empirical ε lower bound exceeds a bank's claimed ε.
{% endif %}
{% if doc.implementation_check.passed is false %}the implementation check of the DP path failed
(see section 4).{% endif %}</div>
{% endif %}
<table><tr><th class="l">bank</th><th>n train</th><th>n test</th><th>ε (PRV)</th>
<th>ε global model</th><th>δ</th><th>MIA AUC</th><th>TPR@1%FPR</th><th>advantage</th>
<th>MIA ε lower bound</th><th>canary ε lower bound / claim</th><th>audit</th>
<th>impl. check</th></tr>
{% for b in doc.banks %}<tr><td class="l">{{ b.id }}</td><td>{{ b.n_train }}</td>
<td>{{ b.n_test }}</td><td>{{ b.epsilon|f }}</td><td>{{ b.epsilon_global_model|f }}</td>
<td>{{ b.delta|f }}</td><td>{{ b.mia_auc|f }}</td><td>{{ b.tpr_at_1pct_fpr|f }}</td>
<td>{{ b.advantage|f }}</td><td>{{ b.epsilon_lower_bound|f }}</td>
<td>{% if b.canary_epsilon_lower_bound is none %}<span class="na">–</span>{% else %}
{% if b.canary_passed is false %}<span class="fail">{{ b.canary_epsilon_lower_bound|f }} /
{{ b.canary_claimed_epsilon|f }}</span>{% else %}{{ b.canary_epsilon_lower_bound|f }} /
{{ b.canary_claimed_epsilon|f }}{% endif %}{% endif %}</td>
<td>{% if b.audit_passed is none %}<span class="na">no claim</span>{% elif b.audit_passed %}
<span class="pass">passed</span>{% else %}<span class="fail">FAILED</span>{% endif %}</td>
<td>{% if b.implementation_check_passed is none %}<span class="na">n/a</span>
{% elif b.implementation_check_passed %}<span class="pass">passed</span>{% else %}
<span class="fail">FAILED</span>{% endif %}</td></tr>{% endfor %}</table>

<h2 id="threat_model">1. Threat and trust model</h2>
{% set t = doc.threat_model %}
<table><tr><th class="l">parties</th><td class="l"><ul>{% for p in t.parties %}<li>{{ p }}</li>
{% endfor %}</ul></td></tr>
<tr><th class="l">coordinator sees</th><td class="l">{{ t.coordinator_sees }}</td></tr>
<tr><th class="l">each bank sees</th><td class="l">{{ t.banks_see }}</td></tr>
<tr><th class="l">protected</th><td class="l"><ul>{% for p in t.protected %}<li>{{ p }}</li>
{% endfor %}</ul></td></tr>
<tr><th class="l">assumptions</th><td class="l"><ul>{% for p in t.assumptions %}<li>{{ p }}</li>
{% endfor %}</ul></td></tr>
<tr><th class="l">not protected</th><td class="l"><ul>{% for p in t.not_protected %}
<li>{{ p }}</li>{% endfor %}</ul></td></tr></table>

<h2 id="dp_specification">2. DP specification per bank</h2>
{% if doc.dp %}
<p class="note">Unit of privacy: one customer record of one bank. Neighbouring datasets: add or
remove one record; every DP-SGD step samples each record independently (Poisson). Recomputed
from each bank's verified ledger: ε at δ by Opacus' PRV accountant (headline), Opacus RDP and
dp-accounting PLD as cross-checks; "reported" is what metrics.json says.</p>
<table><tr><th class="l">bank</th><th>C (clip)</th><th>σ</th><th>q</th><th>steps</th>
<th>rounds</th><th>δ</th><th>δ&lt;1/n</th><th>ε PRV</th><th>ε RDP</th><th>ε PLD</th>
<th>ε global model</th><th>ε reported</th><th>ε lifetime</th>
<th>empirical bound / claimed ε</th><th>ledger</th></tr>
{% for bank, p in doc.bank_parts.items() %}{% set s = p.dp_spec %}{% set c = p.canary_audit or {} %}
{% set cv = p.verdict.canary or {} %}<tr><td class="l">{{ bank }}</td>
<td>{{ s.max_grad_norm|f }}</td><td>{{ s.noise_multiplier|f(4) }}</td><td>{{ s.sample_rate|f }}</td>
<td>{{ s.steps|f }}</td><td>{{ s.rounds_joined|f }}</td><td>{{ s.delta|f }}</td>
<td>{{ s.delta_below_1_over_n|f }}</td><td><b>{{ s.epsilon|f(4) }}</b></td>
<td>{{ s.epsilon_rdp|f(4) }}</td><td>{{ s.epsilon_pld|f(4) }}</td>
<td>{{ s.epsilon_global_model|f(4) }}</td><td>{{ s.epsilon_reported|f(4) }}</td>
<td>{{ s.epsilon_lifetime|f(4) }}</td>
<td>{% if not c.applicable %}<span class="na">not run</span>{% elif cv.passed is false %}
<span class="fail">{{ c.white_box.epsilon_lower_bound|f }} / {{ c.claimed_epsilon|f }}:
FAILED</span>{% else %}<span class="pass">{{ c.white_box.epsilon_lower_bound|f }} /
{{ c.claimed_epsilon|f }}</span>{% endif %}</td>
<td>{% if s.ledger.ok %}<span class="pass">verified</span>{% if s.ledger.head_found %}, head
found{% endif %}{% if s.ledger.pinned %}, registered key{% endif %}{% else %}<span class="fail">NOT
verified</span>{% if s.ledger.error %}: {{ s.ledger.error }}{% endif %}{% endif %}</td></tr>
{% endfor %}
</table>
<p class="note">Empirical bound: the one-run canary audit of section 3 (white-box, 95%
confidence), a lower bound on the ε of the bank's training mechanism; claimed ε: the global
model's ε from the ledger{% if doc.claimed_epsilon is not none %}, here replaced by
--claimed-epsilon {{ doc.claimed_epsilon|f }}{% endif %}. A bound above the claim proves the
claim false (a correct mechanism is FAILED with probability at most 5%).</p>
<h3>Evaluation releases (held-out split)</h3>
<p class="note">Evaluation leaves a bank only as noisy score histograms (and a noisy grade
error histogram) of its held-out split: each a Gaussian release of sensitivity 1, charged in
the ledger before it leaves and composed over the run (ε eval, PRV; RDP cross-check). Crafted-
model attack: the coordinator sends a model that puts one known person alone in the top score
bin; the bank's own release is played {{ (doc.banks[0].eval_attack or {}).trials }} times per
side with that person held out and not, at the bank's σ eval; the best threshold test's TPR
and FPR give an ε lower bound (95% Clopper-Pearson) that must not exceed ε of one release.</p>
<table><tr><th class="l">bank</th><th>releases</th><th>σ eval</th><th>ε eval PRV</th>
<th>ε eval RDP</th><th>ε eval reported</th><th>ε eval lifetime</th><th>attack TPR</th>
<th>attack FPR</th><th>ε LB</th><th>ε one release</th><th>verdict</th></tr>
{% for bank, p in doc.bank_parts.items() %}{% set s = p.dp_spec %}{% set a = p.eval_attack or {} %}
<tr><td class="l">{{ bank }}</td><td>{{ (s.evaluation_releases or [])|length }}</td>
<td>{{ s.eval_noise_multiplier|f(4) }}</td><td><b>{{ s.epsilon_eval|f(4) }}</b></td>
<td>{{ s.epsilon_eval_rdp|f(4) }}</td><td>{{ s.epsilon_eval_reported|f(4) }}</td>
<td>{{ s.epsilon_eval_lifetime|f(4) }}</td><td>{{ a.tpr|f }}</td><td>{{ a.fpr|f }}</td>
<td>{{ a.epsilon_lower_bound|f }}</td><td>{{ a.epsilon_release|f }}</td>
<td>{% if not a %}<span class="na">not measured</span>{% elif a.passed is none %}
<span class="fail">no DP evaluation</span>{% elif a.passed %}
<span class="pass">ε_LB ≤ ε</span>{% else %}<span class="fail">ε_LB &gt; ε: FAILED</span>
{% endif %}</td></tr>{% endfor %}</table>
{% if doc.institution_dp %}{% set i = doc.institution_dp %}
<p class="note"><b>Institution-level DP</b> (unit: one whole bank; Flower's client-side fixed
clipping): ε {{ i.epsilon|f }} at δ {{ i.delta }} (Opacus RDP) over {{ i.rounds }} rounds,
sample rate {{ i.sample_rate }}; each bank clips its round update to L2 norm
{{ i.clipping_norm }} (enforced at the bank, an "update clipped" entry in its ledger) and the
coordinator adds noise of multiplier {{ i.noise_multiplier }} (effective
{{ i.effective_noise_multiplier|f }} on the size-weighted mean). <b>It holds only if the
coordinator adds that noise</b>: the coordinator sees the unnoised sum and no bank can check
the noise; the record-level ε above is what holds against a coordinator that does not.</p>
{% endif %}
{% else %}
<p><b>No DP:</b> this run is a NON-PRIVATE baseline; {% if doc.claimed_epsilon is none %}no ε
is claimed.{% else %}it is audited against the claim ε = {{ doc.claimed_epsilon|f }} given with
--claimed-epsilon: canary bound / claim {% for b in doc.banks %}{{ b.id }}
{% if b.canary_passed is false %}<span class="fail">{{ b.canary_epsilon_lower_bound|f }} /
{{ b.canary_claimed_epsilon|f }}: FAILED</span>{% else %}{{ b.canary_epsilon_lower_bound|f }} /
{{ b.canary_claimed_epsilon|f }}{% endif %}{% if not loop.last %}, {% endif %}{% endfor %}.
{% endif %}
Ledgers: {% for bank, p in doc.bank_parts.items() %}{{ bank }}
{% if p.dp_spec.ledger.ok %}<span class="pass">verified</span>{% else %}
<span class="fail">not verified</span>{% endif %}{% if not loop.last %}, {% endif %}
{% endfor %}.
Evaluation is exact: the crafted-model attack on it reaches {% for b in doc.banks
if b.eval_attack %}TPR {{ b.eval_attack.tpr|f }} at FPR {{ b.eval_attack.fpr|f }} ({{ b.id }}){%
if not loop.last %}, {% endif %}{% endfor %}.</p>
{% endif %}

<h2 id="empirical_privacy">3. Empirical privacy audit</h2>
<h3>One-run canary audit (headline)</h3>
{% if doc.canary_audit and doc.canary_audit.applicable %}
<p class="note">Method: {{ doc.canary_audit.method }}. At each bank, on its own training rows,
a shadow run that is never released replays the mechanism its verified ledger records (σ,
sampling rate, clipping bound C, steps, rounds). <b>White-box</b>: Dirac gradient canaries of norm
{{ doc.canary_audit.canary_norm|int }}·C (so a
mechanism that does not clip shows it) go through the banks' own Poisson sampling, clipping
and noise; the auditor sees every step's noisy sum, as a coordinator sees every update.
<b>Black-box</b>: crafted records (mislabeled outliers) scored by the shadow model alone.
The bound is {{ doc.canary_audit.meaning }}.</p>
<img alt="canary bound vs claimed epsilon" src="data:image/png;base64,{{ plots.canary }}">
<table><tr><th class="l">bank</th><th class="l">audit</th><th>canaries</th><th>guesses</th>
<th>correct</th><th>ε lower bound</th><th>claimed ε</th><th>bound / claim</th><th>verdict</th></tr>
{% for bank, p in doc.bank_parts.items() %}{% set c = p.canary_audit or {} %}
{% if c.applicable %}{% for key, row, claim in [('white_box', 'canary', c.claimed_epsilon),
('black_box', 'canary_black_box', (c.black_box or {}).epsilon_claim)] %}{% if c[key] %}
{% set a = c[key] %}{% set v = p.verdict[row] %}<tr><td class="l">{{ bank }}</td>
<td class="l">{{ a.variant }}</td><td>{{ a.canaries }}</td><td>{{ a.guesses }}</td>
<td>{{ a.correct }}</td><td><b>{{ a.epsilon_lower_bound|f }}</b></td><td>{{ claim|f }}</td>
<td>{% if claim %}{{ (a.epsilon_lower_bound / claim)|f(2) }}{% else %}–{% endif %}</td>
<td>{% if v.passed is none %}<span class="na">no claim</span>{% elif v.passed %}
<span class="pass">ε_LB ≤ ε</span>{% else %}<span class="fail">ε_LB &gt; ε: FAILED</span>
{% endif %}</td></tr>{% endif %}{% endfor %}{% else %}<tr><td class="l">{{ bank }}</td>
<td class="l" colspan="8"><span class="na">{{ c.detail or "not run" }}</span></td></tr>
{% endif %}{% endfor %}</table>
{% else %}<p class="na">Canary audit not run.</p>{% endif %}
<h3>Membership inference on the banks' own rows</h3>
<p class="note"><b>Power:</b> membership inference on the natural rows of a small,
well-generalizing model has almost no statistical power: a non-private run and a DP run at ε = 3
give about the same MIA AUC (≈ 0.5) and an ε lower bound near 0{% if doc.compare %}{% set
theirs = doc.compare.banks|map(attribute='compare_mia_auc')|select('number')|list %} (this run
against the compare run, side by side below: mean MIA AUC {{ (doc.banks|map(attribute='mia_auc')
|sum / doc.banks|length)|f }} vs {{ (theirs|sum / ([theirs|length, 1]|max))|f }}){% endif %}, so
passing it says little. It is kept because it is
what an attacker holding only the model achieves; the canary audit above is what can fail a
mechanism that adds too little noise or does not clip.</p>
<p class="note">Members: each bank's train split; non-members: its held-out split. Attacks:
loss threshold; RMIA and offline LiRA with
{{ (doc.bank_parts.values()|list)[0].membership.n_reference }} reference models per
bank, trained like the target (same architecture, optimizer and DP settings) on complementary
halves of the bank's own rows. ε lower bound = ln((TPR<sub>low</sub> − δ)/FPR<sub>high</sub>)
(or the mirrored TNR/FNR form) with 95% Clopper-Pearson bounds, at the best threshold (chosen on
the same scores, which can only raise the bound). With a few hundred non-members per bank, FPR
below ~{{ ((doc.bank_parts.values()|list)[0].membership.global.attacks.loss.fpr_resolution)|f(2) }}
cannot be resolved, so TPR@0.1%FPR is mostly TPR at zero false positives. A global model
trained by five banks over few rounds leaks little either way.</p>
<img alt="ROC curves" src="data:image/png;base64,{{ plots.roc }}">
<img alt="claimed vs empirical epsilon" src="data:image/png;base64,{{ plots.epsilon }}">
<table><tr><th class="l">bank</th><th class="l">model</th><th class="l">attack</th><th>AUC</th>
<th>TPR@1%</th><th>TPR@0.1%</th><th>advantage</th><th>ε LB</th><th>claimed ε</th>
<th>verdict</th></tr>
{% for bank, p in doc.bank_parts.items() %}{% for model in ['global', 'personalized'] %}
{% if model in p.membership %}{% set m = p.membership[model] %}{% set v = p.verdict[model] %}
{% for name, a in m.attacks.items() %}<tr><td class="l">{{ bank }}</td>
<td class="l">{{ model }}</td>
<td class="l">{{ name }}</td><td>{{ a.auc|f }}</td><td>{{ a.tpr_at_1pct_fpr|f }}</td>
<td>{{ a.tpr_at_01pct_fpr|f }}</td><td>{{ a.advantage|f }}</td>
<td>{{ a.epsilon_lb.epsilon_lb|f }}</td><td>{{ v.claimed_epsilon|f }}</td>
<td>{% if v.passed is none %}<span class="na">no claim</span>
{% elif a.epsilon_lb.epsilon_lb <= (v.claimed_epsilon or 0) %}<span class="pass">ε_LB ≤ ε</span>
{% else %}<span class="fail">ε_LB &gt; ε: FAILED</span>{% endif %}</td></tr>{% endfor %}
{% endif %}{% endfor %}{% endfor %}</table>
<p class="note">Mean loss, members vs non-members (global model): {% for bank, p in
doc.bank_parts.items() %}{{ bank }} {{ p.membership.global.mean_loss_members|f }} /
{{ p.membership.global.mean_loss_nonmembers|f }}{% if not loop.last %}; {% endif %}{% endfor %}.
The personalized model (DP fine-tuned at the bank, never leaves it) is audited against the whole
run's ε.</p>
{% if doc.compare %}
<h3>This run vs compare run ({{ doc.compare.privacy }})</h3>
<table><tr><th class="l">bank</th><th>MIA AUC</th><th>compare</th><th>advantage</th>
<th>compare</th><th>TPR@1%</th><th>compare</th><th>ε LB</th><th>compare</th>
<th>canary ε LB</th><th>compare</th></tr>
{% for b in doc.compare.banks %}<tr><td class="l">{{ b.id }}</td><td>{{ b.mia_auc|f }}</td>
<td>{{ b.compare_mia_auc|f }}</td><td>{{ b.advantage|f }}</td><td>{{ b.compare_advantage|f }}</td>
<td>{{ b.tpr_at_1pct_fpr|f }}</td><td>{{ b.compare_tpr_at_1pct_fpr|f }}</td>
<td>{{ b.epsilon_lower_bound|f }}</td><td>{{ b.compare_epsilon_lower_bound|f }}</td>
<td>{{ b.canary_epsilon_lower_bound|f }}</td><td>{{ b.compare_canary_epsilon_lower_bound|f }}</td>
</tr>
{% endfor %}</table>
{% endif %}

<h2 id="implementation_check">4. Implementation check</h2>
{% if not doc.implementation_check.applicable %}
<p class="na">Not applicable: non-private run.</p>
{% else %}
<p>Overall: {% if doc.implementation_check.passed %}<span class="pass">passed</span>{% else %}
<span class="fail">FAILED</span>{% endif %}. White-box canary test of the banks' DP-SGD path
(<code>train_locally</code>) at each bank's σ and C, and of each bank's ledger accounting.</p>
<table><tr><th class="l">bank</th><th class="l">check</th><th>result</th>
<th class="l">detail</th></tr>
{% for bank, c in doc.implementation_check.banks.items() %}{% for k in c.checks %}<tr>
<td class="l">{{ bank }}</td><td class="l">{{ k.name }}</td><td>{% if k.passed %}
<span class="pass">pass</span>{% else %}<span class="fail">FAIL</span>{% endif %}</td>
<td class="l">{{ k.detail }}</td></tr>{% endfor %}{% endfor %}</table>
{% endif %}

<h2 id="fairness">5. Fairness across protected attributes</h2>
{% set fr = doc.fairness %}
<p class="note">Held-out splits of all banks, summed. Operating threshold: approve when PD &lt;
{{ fr.threshold|f }} ({{ fr.rule }}). Groups under {{ fr.min_group }} rows at a bank are pooled
into "other" before leaving the bank. AUC is shown when a group has at least 5 defaults and 5
non-defaults.</p>
<img alt="fairness" src="data:image/png;base64,{{ plots.fairness }}">
{% for view, data in fr.views.items() %}<h3>{{ view }}</h3>
<table><tr><th class="l">group</th><th>n</th><th>defaults</th><th>AUC</th><th>mean PD</th>
<th>observed rate</th><th>calibration gap</th><th>approval rate</th><th>approval (good)</th></tr>
{% for g, r in data.groups.items() %}<tr><td class="l">{{ g }}</td><td>{{ r.n }}</td>
<td>{{ r.n_default }}</td><td>{{ r.auc|f }}</td><td>{{ r.mean_pd|f }}</td>
<td>{{ r.observed_default_rate|f }}</td><td>{{ r.calibration_gap|f }}</td>
<td>{{ r.approval_rate|f }}</td><td>{{ r.approval_rate_good|f }}</td></tr>{% endfor %}</table>
<p class="note">Largest gaps: {% for metric, gap in data.gaps.items() %}{{ metric }}
{% if gap is mapping %}{{ gap.gap|f }} ({{ gap.lowest }} vs {{ gap.highest }}){% else %}
{{ gap|f }}{% endif %}{% if not loop.last %}; {% endif %}{% endfor %}{% if doc.compare %};
compare run: {% for metric, pair in doc.compare.fairness_gaps[view].items() %}{{ metric }}
{{ pair.compare|f }}{% if not loop.last %}, {% endif %}{% endfor %}{% endif %}.</p>
{% endfor %}

<h2 id="explanations">6. Explanations</h2>
{% set ex = doc.explanations %}
<p class="note">Integrated Gradients (Captum) on the logit of default, relative to each bank's
average applicant, one-hot slots folded into their column; {{ ex.n_explained }} held-out
applicants explained, {{ ex.n_declined }} of them declined at the operating threshold
(completeness error ≤ {{ ex.convergence_delta|f(2) }}).</p>
<img alt="attributions" src="data:image/png;base64,{{ plots.attributions }}">
<h3>Principal reasons given to declined applicants</h3>
<table><tr><th class="l">reason</th><th>applicants</th></tr>{% for reason, n in
ex.principal_reasons[:10] %}<tr><td class="l">{{ reason }}</td><td>{{ n }}</td></tr>{% endfor %}
</table>
<h3>Sample adverse-action notices</h3>
<table><tr><th class="l">bank</th><th>risk band</th>
<th class="l">top reasons (plain words)</th></tr>
{% for bank, examples in ex.examples.items() %}{% for e in examples %}<tr>
<td class="l">{{ bank }}</td>
<td>{{ e.pd_band }}</td><td class="l">{{ e.reasons|join('; ') }}</td></tr>{% endfor %}{% endfor %}
</table>

<h2 id="utility">7. Utility</h2>
{% set u = doc.utility %}
<table><tr><th class="l">scope</th><th>n</th><th>defaults</th><th>AUC</th><th>Brier</th>
<th>KS</th></tr>
<tr><td class="l"><b>consortium</b></td><td>{{ u.n }}</td><td>{{ u.n_default }}</td>
<td><b>{{ u.auc|f }}</b></td><td>{{ u.brier|f }}</td><td>{{ u.ks|f }}</td></tr>
{% for bank, r in u.per_bank.items() %}<tr><td class="l">{{ bank }}</td><td>{{ r.n }}</td>
<td>{{ r.n_default }}</td><td>{{ r.auc|f }}</td><td>{{ r.brier|f }}</td><td>{{ r.ks|f }}</td>
</tr>{% endfor %}
{% if doc.compare %}<tr><td class="l">compare run (consortium)</td><td></td><td></td>
<td>{{ doc.compare.utility.compare.auc|f }}</td><td>{{ doc.compare.utility.compare.brier|f }}</td>
<td>{{ doc.compare.utility.compare.ks|f }}</td></tr>{% endif %}</table>
<img alt="calibration" src="data:image/png;base64,{{ plots.calibration }}">

<h2 id="reproducibility">8. Reproducibility and regulatory mapping</h2>
{% set r = doc.reproducibility %}
<table><tr><th class="l">code revision</th><td class="l">{{ r.code_revision.commit }}
{% if r.code_revision.dirty %}(uncommitted changes){% endif %}</td></tr>
<tr><th class="l">python</th><td class="l">{{ r.python }}</td></tr>
<tr><th class="l">packages</th><td class="l">{% for k, v in r.packages.items() %}{{ k }} {{ v }}
{% if not loop.last %}· {% endif %}{% endfor %}</td></tr>
<tr><th class="l">seeds</th><td class="l">run seed {{ r.seeds.run_seed }}, audit seed
{{ r.seeds.audit_seed }}. {{ r.seeds.note }}</td></tr>
<tr><th class="l">audit settings</th><td class="l">{{ r.audit_settings }}</td></tr>
<tr><th class="l">data fingerprints</th><td class="l">{% for bank, fp in
r.data_fingerprints.items() %}{{ bank }}: <code>{{ fp.sha256[:16] }}…</code>
{% if fp.ledger_matches %}(= ledger){% else %}<span class="fail">no ledger on this data</span>
{% endif %}<br>{% endfor %}</td></tr>
<tr><th class="l">config</th><td class="l" style="font-size:11px">{% for k, v in r.config.items()
%}{{ k }}={{ v }}{% if not loop.last %}, {% endif %}{% endfor %}</td></tr></table>
<h3>What auditors ask for, and where it is</h3>
<table><tr><th class="l">section</th><th class="l">GDPR Art. 35 DPIA</th>
<th class="l">EU AI Act Annex IV (credit scoring: high-risk, Annex III 5(b))</th>
<th class="l">SR 11-7 validation</th></tr>{% for m in r.compliance_mapping %}<tr>
<td class="l">{{ m.section }}</td><td class="l">{{ m.gdpr_art35_dpia }}</td>
<td class="l">{{ m.eu_ai_act_annex_iv }}</td><td class="l">{{ m.sr_11_7 }}</td></tr>{% endfor %}
</table>
</body></html>
"""
