// A vote burst through the stack's nginx for `pgvote bench --live`: VUS virtual users, each casting
// PER_VU votes as new anonymous voters as fast as answers come, each VU from its own loopback address
// (k6 --local-ips), so that no address exceeds the per-address limits (nginx: bursts of 20; the
// database: 20 per minute): the burst measures the servers, not the limiters.
//   k6 run --local-ips 127.90.0.1-127.90.9.255 -e BASE_URL=... -e POLL_ID=... -e OPTION_IDS='[...]' \
//          -e VUS=100 -e PER_VU=20 -e RUN=<unique> live_votes.js
import http from 'k6/http';
import { check } from 'k6';

const OPTION_IDS = JSON.parse(__ENV.OPTION_IDS);
const URL = `${__ENV.BASE_URL}/rpc/cast_vote`;
const PARAMS = { headers: { 'Content-Type': 'application/json' } };

export const options = {
  scenarios: {
    burst: { executor: 'per-vu-iterations', vus: Number(__ENV.VUS), iterations: Number(__ENV.PER_VU), maxDuration: '10m' },
  },
  summaryTrendStats: ['avg', 'p(50)', 'p(95)', 'max'],
};

export default function () {
  const body = JSON.stringify({
    poll_id: __ENV.POLL_ID,
    option_ids: [OPTION_IDS[(__VU + __ITER) % OPTION_IDS.length]],
    voter_fingerprint: `${__ENV.RUN}-${__VU}-${__ITER}`,
  });
  check(http.post(URL, body, PARAMS), { 'vote recorded': (r) => r.status === 200 });
}
