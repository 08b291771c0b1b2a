// The load of one fault round: every ballot of the plan cast once through nginx
// (POST /rpc/cast_vote), re-sent identically after an infrastructure failure - no HTTP answer
// (reset, refused, timed out: status 0), 502, 503 or 504, or PostgREST 12's answer to a pooled
// connection that broke under the request (400 with an empty error code: it reports that failure
// as a client error, PostgREST/postgrest#4681; no answer of the API has an empty code), or its 400
// 0A000 from a server that had just become a read-only standby (the HA stack's failover) - after a
// short growing pause, a bounded number of times. Any other answer is the ballot's final one.
// Identical re-casts are safe: the API answers "unchanged" for a ballot it already stored.
//
// Every attempt is one point of the `vote_attempts` trend (value: milliseconds from sending to the
// answer; the point's time is the answer's), tagged with the ballot's index in the plan, the
// attempt number, the status, and either the answer (200: recorded / changed / unchanged, and the
// option ids it reports) or the error (the API's error code, or k6's error code and message when
// there was no HTTP answer; a final error also keeps the body the client was told).
// Every send is also one point of the `vote_sends` counter: the sends not yet answered are the calls
// in flight while the round runs (a crash round waits for enough of them before its kill).
// tests/reliability/k6round.py writes the plan and reads these points back from the JSON output.
//
// plan.vus VUs, all released at once, VU v (1-based) casting ballots (v - 1) * per_vu ... v * per_vu - 1
// one after another: a steady load the fault lands in, or with one ballot per VU a duplicate storm.
// Each VU has its own source address (k6 --local-ips) and casts at most per_vu ballots: nginx and the
// database limit per address.
import http from 'k6/http';
import { sleep } from 'k6';
import exec from 'k6/execution';
import { SharedArray } from 'k6/data';
import { Counter, Trend } from 'k6/metrics';

const plan = JSON.parse(open(__ENV.PGVOTE_PLAN));
const ballots = new SharedArray('ballots', () => JSON.parse(open(plan.ballots_path)));
const attempts = new Trend('vote_attempts', true);
const sends = new Counter('vote_sends');

const RETRYABLE = { 0: true, 502: true, 503: true, 504: true };

// 400 0A000: the server reached had just become a read-only standby (a failover; its BEGIN READ
// WRITE failed, nothing ran)
function retryable(res, error) {
    return RETRYABLE[res.status] === true || (res.status === 400 && (error === '' || error === '0A000'));
}
const url = `${plan.base_url}/rpc/cast_vote`;

export const options = {
    scenarios: {
        round: {
            executor: 'per-vu-iterations',
            vus: plan.vus,
            iterations: plan.per_vu,
            maxDuration: `${plan.max_duration_s}s`,
            gracefulStop: `${plan.call_timeout_s + 5}s`,
        },
    },
    systemTags: ['status'],
    summaryTrendStats: ['med', 'p(99)', 'max'],
};

function errorOf(res) {
    if (res.status === 0) {  // "read tcp a->b: read: connection reset by peer" -> "connection reset by peer"
        const parts = String(res.error || '').split(': ');
        return `${res.error_code} ${parts[parts.length - 1]}`;
    }
    try {
        return String(res.json('code'));
    } catch (e) {
        return 'not_json';
    }
}

export default function () {
    const index = (exec.vu.idInTest - 1) * plan.per_vu + exec.vu.iterationInScenario;
    if (index >= ballots.length) {
        return;
    }
    const ballot = ballots[index];
    const headers = { 'Content-Type': 'application/json', Accept: 'application/json' };
    if (ballot.auth) {
        headers.Authorization = ballot.auth;
    }
    const params = { headers: headers, timeout: `${plan.call_timeout_s}s` };
    for (let attempt = 1; attempt <= plan.max_attempts; attempt++) {
        const sent = Date.now();
        sends.add(1);
        const res = http.post(url, ballot.body, params);
        const tags = { ballot: String(index), attempt: String(attempt), status: String(res.status) };
        let again = false;
        if (res.status === 200) {
            tags.answer = String(res.json('status'));
            tags.options = res.json('option_ids').join(',');  // the ballot the answer reports
        } else {
            tags.error = errorOf(res);
            again = retryable(res, tags.error);
            if (!again) {  // a final error: keep what the client was told
                tags.body = String(res.body).slice(0, 300);
            }
        }
        attempts.add(Date.now() - sent, tags);
        if (!again) {
            return;
        }
        // 0.2, 0.4, 0.8, then 1 s, with jitter: well under nginx's 10 requests/s per address
        sleep(Math.min(1, 0.2 * 2 ** (attempt - 1)) * (0.75 + Math.random() / 2));
    }
}

export function handleSummary() {
    return {};
}
