// Steady vote traffic through the stack's nginx for a fixed time: every iteration is a new anonymous
// voter (fingerprint from VU and iteration). Used by tests that change the topology under load
// (blue-green switch) and must see no failed request.
//   k6 run -e BASE_URL=http://127.0.0.1:15434 -e POLL_ID=... -e OPTION_IDS='["..."]' -e VUS=40 -e DURATION=10s
import http from 'k6/http';
import { check, sleep } from 'k6';

const BASE_URL = __ENV.BASE_URL;
const POLL_ID = __ENV.POLL_ID;
const OPTION_IDS = JSON.parse(__ENV.OPTION_IDS);
const PAUSE = Number(__ENV.PAUSE || '0.2'); // seconds between one VU's calls: keeps each address under nginx's limit

export const options = {
  vus: Number(__ENV.VUS || '40'),
  duration: __ENV.DURATION || '10s',
  summaryTrendStats: ['avg', 'p(50)', 'p(95)', 'max'],
};

export default function () {
  const body = JSON.stringify({
    poll_id: POLL_ID,
    option_ids: [OPTION_IDS[__ITER % OPTION_IDS.length]],
    voter_fingerprint: `steady-${__VU}-${__ITER}`,
  });
  // An identical ballot is safe to send twice, and saying so lets k6's HTTP transport (Go's) re-send it
  // when a kept-alive connection turns out closed before any answer: how nginx's graceful reload ends
  // its idle client connections during a blue-green switch.
  const headers = { 'Content-Type': 'application/json', 'Idempotency-Key': `steady-${__VU}-${__ITER}` };
  const res = http.post(`${BASE_URL}/rpc/cast_vote`, body, { headers });
  check(res, { 'vote recorded': (r) => r.status === 200 && r.json('status') === 'recorded' });
  sleep(PAUSE);
}
