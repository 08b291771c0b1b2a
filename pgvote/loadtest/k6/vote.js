// One ballot per call of castBallot(): POST <base_url>/rpc/<fn>, re-sent identically after an
// infrastructure failure (502/503/504, a reset or refused connection, a timeout, or PostgREST 12's
// 400 with an empty error code for a pooled connection that broke under the request: no answer of
// the API has an empty code, docs/postgrest.md), never after any other answer: a 4xx (429 included)
// is the voter's final answer and counts as a failure.
// Identical re-casts are safe: on a single-ballot poll a stored ballot answers "unchanged".
//
// The plan (a JSON file written by pgvote/loadtest/k6.py, path in PGVOTE_PLAN) says where to
// vote and what: poll_id, the option sets, the run tag that makes fingerprints unique, and the
// per-address rate limit each VU stays within (every VU has its own source address, k6
// --local-ips, so it is one caller of nginx's limit_req and of the database's bucket).
import http from 'k6/http';
import { sleep } from 'k6';
import exec from 'k6/execution';
import { Counter, Trend } from 'k6/metrics';

export const plan = JSON.parse(open(__ENV.PGVOTE_PLAN));

// One point per voter, when its last call returned, tagged with vu and iter like every request (the
// voter's number): its outcome (ack, rejected: a final answer other than 200, gave_up: still failing
// after max_attempts), the last status and answer, the attempts; the value is the ms from its first
// send to its last answer. And one vote_errors point per answer other than 200, by status and code.
const outcomes = new Trend('vote_outcomes');
const errors = new Counter('vote_errors');

const RETRYABLE = { 0: true, 502: true, 503: true, 504: true };
const url = `${plan.base_url}/rpc/${plan.fn}`;
const headers = { 'Content-Type': 'application/json', Accept: 'application/json' };

// Straight at PostgREST (no nginx to set it), plan.caller_header names each VU as a caller in
// X-Real-IP, so that the database's rate-limit hook keeps a bucket per VU as it does behind nginx.
// The hook keys IPv6 callers by their /64 (and counts text that is no address as one shared caller):
// each VU gets a /64 of its own in the unique-local range, the run's tag in its prefix.
function tagHash(text) {
    let h = 0;
    for (let i = 0; i < text.length; i++) {
        h = (h * 31 + text.charCodeAt(i)) >>> 0;
    }
    return h;
}
const prefix = (() => {
    const h = tagHash(plan.tag);
    return `fd00:${(h >>> 16).toString(16)}:${(h & 0xffff).toString(16)}`;
})();

function requestParams() {
    const caller = `${prefix}:${(__VU & 0xffff).toString(16)}::1`;
    const h = plan.caller_header ? Object.assign({ 'X-Real-IP': caller }, headers) : headers;
    return { headers: h, timeout: `${plan.call_timeout_s}s` };
}

// This VU's view of its address's token bucket (burst, then per_minute), as conservative as the
// servers' limits: every attempt takes a token here, while the database gives failed ones back.
let tokens = plan.limit.burst;
let refilledAt = Date.now();

function takeToken() {
    const perMs = plan.limit.per_minute / 60000;
    const now = Date.now();
    tokens = Math.min(plan.limit.burst, tokens + (now - refilledAt) * perMs);
    refilledAt = now;
    if (tokens < 1) {
        sleep((1 - tokens) / perMs / 1000);
        tokens = 1;
        refilledAt = Date.now();
    }
    tokens -= 1;
}

// The load phase of a request in a staged scenario (plan.stages: seconds and phase each), by the time
// since the scenario started: requests are tagged with it, so k6's thresholds judge each phase.
function phase() {
    let elapsed = (Date.now() - exec.scenario.startTime) / 1000;
    for (const s of plan.stages || []) {
        if (elapsed < s.seconds) {
            return s.phase;
        }
        elapsed -= s.seconds;
    }
    return 'normal';
}

// Voter number `voter` (an integer): its fingerprint lt-<tag>-<voter>, its options the voter-th
// pattern (pgvote/loadtest/scenarios.py BallotSpec builds the same).
export function castBallot(voter) {
    const body = JSON.stringify({
        poll_id: plan.poll_id,
        option_ids: plan.patterns[voter % plan.patterns.length],
        voter_fingerprint: `lt-${plan.tag}-${voter}`,
    });
    const params = requestParams();
    let started = 0;
    let res = null;
    let attempt = 1;
    let outcome = 'gave_up';
    for (; attempt <= plan.max_attempts; attempt++) {
        takeToken();
        started = started || Date.now();
        params.tags = { phase: phase() };
        res = http.post(url, body, params);
        if (res.status === 200) {
            outcome = 'ack';
            break;
        }
        const code = apiErrorCode(res);
        errors.add(1, { status: String(res.status), error_code: res.error_code ? String(res.error_code) : '' });
        if (!RETRYABLE[res.status] && !(res.status === 400 && code === '')) {
            outcome = 'rejected';
            break;
        }
        if (attempt < plan.max_attempts) {
            sleep(Math.min(1, 0.05 * 2 ** (attempt - 1)) * (0.5 + Math.random() / 2));
        }
    }
    const answer = outcome === 'ack' ? String(res.json('status'))
        : String(apiErrorCode(res) || res.error_code || res.status);
    outcomes.add(Date.now() - started, { outcome, status: String(res.status), answer,
                                         attempts: String(Math.min(attempt, plan.max_attempts)) });
}

function apiErrorCode(res) {
    try {
        return String(res.json('code'));
    } catch (e) {
        return null; // not the API's JSON error shape
    }
}

export function handleSummary(data) {
    return { [plan.summary_path]: JSON.stringify(data) };
}
