<?php
// A shop's receiver for reconciled's HTTP sink: verifies the Standard Webhooks signature,
// handles each action once (by webhook-id), answers 204. Set RECONCILED_SINK_SECRET (whsec_…)
// and RECONCILED_DONE_DIR (a writable folder that remembers what was handled).
$body = file_get_contents('php://input');
$id = $_SERVER['HTTP_WEBHOOK_ID'] ?? ''; $ts = $_SERVER['HTTP_WEBHOOK_TIMESTAMP'] ?? '';
$key = base64_decode(substr(getenv('RECONCILED_SINK_SECRET'), strlen('whsec_')));
$mac = base64_encode(hash_hmac('sha256', "$id.$ts.$body", $key, true));
$ok = false;
foreach (explode(' ', $_SERVER['HTTP_WEBHOOK_SIGNATURE'] ?? '') as $sig) {
    $ok = $ok || hash_equals("v1,$mac", $sig);
}
if (!$ok || abs(time() - (int) $ts) > 300 || !preg_match('/^[A-Za-z0-9_]+$/', $id)) {
    http_response_code(400); exit;
}
$done = fopen(getenv('RECONCILED_DONE_DIR') . "/$id", 'x');     // fails if already handled
if ($done !== false) {
    $action = json_decode($body, true)['data'];
    // Carry it out here: $action['kind'] is fulfil, refund, notify_customer or review.
    // If that fails: unlink the file and answer 500; reconciled sends it again.
    fwrite($done, $body); fclose($done);
}
http_response_code(204);
