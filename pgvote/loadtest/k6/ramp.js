// The original guide's k6 load test (the script of its testing strategy): its five stages
// and its two thresholds, scaled by the plan (VUs and durations), voting on one poll. As in the
// guide, every iteration is a new voter and a VU sleeps 1 s between iterations; here it also
// stays within its address's rate limit (vote.js), since a real user never votes 60 times a minute.
// A crossed threshold makes k6 exit 99: a measured result, reported, not a broken run.
import { sleep } from 'k6';
import { castBallot, plan } from './vote.js';

export { handleSummary } from './vote.js';

// Voter numbers: VU v casts v * VOTERS_PER_VU + its iteration (pgvote/loadtest/http_scenarios.py reads them back).
const VOTERS_PER_VU = 1000000;

export const options = {
    scenarios: {
        ramp: {
            executor: 'ramping-vus',
            startVUs: 0,
            stages: plan.stages.map((s) => ({ duration: `${s.seconds}s`, target: s.target })),
            // a VU leaving the ramp finishes its ballot (its retries included): none left half-cast
            gracefulRampDown: `${plan.call_timeout_s * 2}s`,
            gracefulStop: `${plan.call_timeout_s * 2}s`,
        },
    },
    thresholds: {
        http_req_duration: ['p(95)<500'],
        http_req_failed: ['rate<0.05'],
    },
    systemTags: ['status', 'vu', 'iter', 'error_code'],
    summaryTrendStats: ['avg', 'med', 'p(95)', 'p(99)', 'max'],
};

export default function () {
    castBallot(__VU * VOTERS_PER_VU + __ITER);
    sleep(1);
}
