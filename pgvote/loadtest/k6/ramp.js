// The original guide's k6 load test (the script of its testing strategy): its five stages
// and its thresholds, scaled by the plan (peak_vus replaces its 50,000 users, durations x
// time_scale), voting on one poll. As in the guide, every iteration is a new voter and a VU sleeps
// 1 s between iterations; here it also stays within its address's rate limit (vote.js), since a
// real user never votes 60 times a minute. Requests are tagged with their phase (vote.js): the
// guide's success targets, 99% under normal load and 95% under the spike, are thresholds of each.
// A crossed threshold makes k6 exit 99: a measured result, reported, not a broken run.
import { sleep } from 'k6';
import { castBallot, plan } from './vote.js';

export { handleSummary } from './vote.js';

// The guide's stages: seconds, VUs at the end (of its 50,000 peak), phase; linear in between.
const GUIDE = [[30, 1000, 'normal'], [60, 10000, 'normal'], [30, 50000, 'spike'], [60, 50000, 'spike'],
               [30, 0, 'normal']];
plan.stages = GUIDE.map(([seconds, vus, phase]) => ({
    seconds: seconds * plan.time_scale, target: Math.round(vus * plan.peak_vus / 50000), phase,
}));

// Voter numbers: VU v casts v * VOTERS_PER_VU + its iteration (pgvote/loadtest/k6.py reads them back).
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
        'http_req_duration{phase:spike}': ['p(95)<500'],
        'http_req_failed{phase:spike}': ['rate<0.05'],
        'http_req_failed{phase:normal}': ['rate<0.01'],
        'http_req_duration{phase:normal}': ['p(95)<500'],
    },
    systemTags: ['status', 'vu', 'iter', 'error_code'],
    summaryTrendStats: ['avg', 'med', 'p(95)', 'p(99)', 'max'],
};

export default function () {
    castBallot(__VU * VOTERS_PER_VU + __ITER);
    sleep(1);
}
