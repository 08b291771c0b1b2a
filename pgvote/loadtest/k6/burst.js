// The burst: plan.voters distinct voters on one poll from plan.vus VUs, all released together
// (per-vu-iterations starts every VU at once, after all are initialised). VU v (1-based) casts
// voters (v - 1) * per_vu .. v * per_vu - 1: ITERATION i of VU v is voter (v - 1) * per_vu + i, so
// the vu and iter tags of each request in the JSON output name its voter.
import { castBallot, plan } from './vote.js';

export { handleSummary } from './vote.js';

export const options = {
    scenarios: {
        burst: {
            executor: 'per-vu-iterations',
            vus: plan.vus,
            iterations: plan.per_vu,
            maxDuration: `${plan.max_duration_s}s`,
            gracefulStop: `${plan.call_timeout_s * 2}s`,
        },
    },
    systemTags: ['status', 'vu', 'iter', 'error_code'],
    summaryTrendStats: ['avg', 'med', 'p(95)', 'p(99)', 'max'],
};

export default function () {
    const voter = (__VU - 1) * plan.per_vu + __ITER;
    if (voter < plan.voters) {
        castBallot(voter);
    }
}
