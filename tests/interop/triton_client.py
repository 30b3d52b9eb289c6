"""Drives a running `medguard serve` with Triton's own Python client.

Reads a JSON job on stdin: {"url": "127.0.0.1:PORT", "model": NAME,
"seed": S, "images": {NAME: [C*H*W floats], ...}, "ca_cert": PEM or null,
"wrong_ca": PEM or null} and writes one JSON object to stdout: what the
server said through the client, per image, over JSON and over the binary
tensor data extension, and mixed (binary probabilities, JSON logits).
With "ca_cert" the client speaks https and verifies
the server against that CA and the host name; with "wrong_ca" it also says
whether a client trusting only that CA was refused. The Rust test
(host/tests/cli/serve.rs) compares it with `medguard predict --json`.
"""

import json
import sys

import gevent.ssl
import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def infer(client, model, image, shape, seed, binary, logits_binary):
    tensor = httpclient.InferInput("image", shape, "FP32")
    tensor.set_data_from_numpy(image, binary_data=binary)
    wanted = [
        httpclient.InferRequestedOutput("probabilities", binary_data=binary),
        httpclient.InferRequestedOutput("logits", binary_data=logits_binary),
    ]
    try:
        result = client.infer(
            model,
            [tensor],
            outputs=wanted,
            request_id="interop",
            parameters={"medguard_seed": seed},
        )
    except InferenceServerException as e:
        return {"status": int(e.status()), "error": e.message()}
    response = result.get_response()
    parameters = response["parameters"]
    return {
        "status": 200,
        # Which outputs came as bytes after the JSON, as the server said.
        "binary_outputs": sorted(
            o["name"]
            for o in response["outputs"]
            if "binary_data_size" in o.get("parameters", {})
        ),
        "id": response.get("id"),
        "probabilities": result.as_numpy("probabilities").astype(float).tolist(),
        "logits": result.as_numpy("logits").astype(float).tolist(),
        "verdict": parameters["medguard_verdict"],
        "seed": parameters["medguard_seed"],
        "results": json.loads(parameters["medguard_results"]),
    }


def connect(url, ca_cert):
    """A client for url; over https, verifying the server against ca_cert."""
    if ca_cert is None:
        return httpclient.InferenceServerClient(url=url)
    return httpclient.InferenceServerClient(
        url=url,
        ssl=True,
        ssl_options={"ca_certs": ca_cert},
        ssl_context_factory=gevent.ssl.create_default_context,
    )


def main():
    job = json.load(sys.stdin)
    client = connect(job["url"], job.get("ca_cert"))
    model = job["model"]
    metadata = client.get_model_metadata(model)
    shape = [1] + metadata["inputs"][0]["shape"][1:]
    out = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "server": client.get_server_metadata(),
        "model": metadata,
        "model_ready": client.is_model_ready(model),
        "images": {},
    }
    for name, values in job["images"].items():
        image = np.asarray(values, dtype=np.float32).reshape(shape)
        out["images"][name] = {
            transport: infer(client, model, image, shape, job["seed"], binary, logits_binary)
            for transport, binary, logits_binary in [
                ("json", False, False),
                ("binary", True, True),
                # One answer with a binary output and a JSON one.
                ("mixed", True, False),
            ]
        }
    try:
        client.get_model_metadata("no-such-model")
        out["unknown_model"] = None
    except InferenceServerException as e:
        out["unknown_model"] = {"status": int(e.status()), "error": e.message()}
    client.close()
    if job.get("wrong_ca"):
        try:
            other = connect(job["url"], job["wrong_ca"])
            other.is_server_live()
            out["wrong_ca"] = "connected"
        except Exception as e:  # noqa: BLE001 - any refusal will do
            out["wrong_ca"] = "refused: " + type(e).__name__
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
