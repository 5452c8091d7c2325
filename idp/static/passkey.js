// Passkey buttons. A form marked data-passkey="create" or "get" asks the server for the
// ceremony's options (POST to data-options, with the form's CSRF token), lets the browser
// make or use a passkey, puts the answer in the form's hidden "credential" field and
// submits the form: the server verifies it. Without JavaScript the forms stay hidden.
(function () {
  if (!window.PublicKeyCredential) return;

  function toBytes(text) {
    var base64 = text.replace(/-/g, "+").replace(/_/g, "/");
    var binary = atob(base64 + "===".slice((base64.length + 3) % 4));
    return Uint8Array.from(binary, function (c) { return c.charCodeAt(0); });
  }
  function toText(buffer) {
    var binary = String.fromCharCode.apply(null, new Uint8Array(buffer));
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }
  function creation(options) {
    options.challenge = toBytes(options.challenge);
    options.user.id = toBytes(options.user.id);
    (options.excludeCredentials || []).forEach(function (c) { c.id = toBytes(c.id); });
    return options;
  }
  function request(options) {
    options.challenge = toBytes(options.challenge);
    (options.allowCredentials || []).forEach(function (c) { c.id = toBytes(c.id); });
    return options;
  }
  function answer(credential) {
    var r = credential.response, response = {clientDataJSON: toText(r.clientDataJSON)};
    if (r.attestationObject) {
      response.attestationObject = toText(r.attestationObject);
      response.transports = r.getTransports ? r.getTransports() : [];
    } else {
      response.authenticatorData = toText(r.authenticatorData);
      response.signature = toText(r.signature);
      if (r.userHandle) response.userHandle = toText(r.userHandle);
    }
    return JSON.stringify({
      id: credential.id, rawId: toText(credential.rawId), type: credential.type,
      response: response, authenticatorAttachment: credential.authenticatorAttachment,
      clientExtensionResults: credential.getClientExtensionResults()
    });
  }

  document.querySelectorAll("form[data-passkey]").forEach(function (form) {
    var status = form.querySelector("[data-passkey-status]");
    form.hidden = false;
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      status.textContent = "Waiting for your passkey…";
      fetch(form.dataset.options, {method: "POST", body: new FormData(form),
                                   credentials: "same-origin"})
        .then(function (response) {
          if (!response.ok) {
            return response.json().catch(function () { return {}; }).then(function (body) {
              throw new Error(body.error_description || "The page expired. Reload it and try again.");
            });
          }
          return response.json();
        })
        .then(function (options) {
          return form.dataset.passkey === "create"
            ? navigator.credentials.create({publicKey: creation(options)})
            : navigator.credentials.get({publicKey: request(options)});
        })
        .then(function (credential) {
          form.elements.credential.value = answer(credential);
          form.submit();
        })
        .catch(function (error) {
          status.textContent = error.name === "NotAllowedError"
            ? "No passkey was used. Try again, or use another way."
            : error.message;
        });
    });
  });
})();
